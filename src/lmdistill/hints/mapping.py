"""Which student layer learns from which teacher layer.

Convention used throughout `lmdistill.hints`: "layer i" (0-based) is the output of decoder layer i,
which is `outputs.hidden_states[i + 1]` of a Hugging Face model called with `output_hidden_states=True`
(index 0 holds the embeddings). In transformers 5 the last entry is taken after the final norm, so
"the last layer" of either model means its normed output, the input of its head.

A mapping is a list of `(student_layer, teacher_layer)` pairs, in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmdistill.errors import UserError

#: Named strategies accepted by `resolve_layer_map` (an explicit list of pairs is accepted too).
STRATEGIES = ("uniform", "last", "first_last", "copied")
#: Values of the `projection` setting: a learned linear map where widths differ, or none at all.
PROJECTIONS = ("linear", "none")

Widths = int | Sequence[int]


def pair_key(student_layer: int, teacher_layer: int) -> str:
    """The name of a pair in module dicts and logs: (3, 9) -> "s3_t9"."""
    return f"s{student_layer}_t{teacher_layer}"


def width_of(widths: Widths, layer: int) -> int:
    """The feature width of `layer`: `widths` is one int for every layer, or a per-layer list."""
    if isinstance(widths, int):
        return widths
    return int(widths[layer])


def projection_kind(student_width: int, teacher_width: int, projection: str) -> str:
    """How a student feature of `student_width` reaches `teacher_width`: "identity", "linear 384->576",
    or "none (384 != 576)" for a mismatch that `HintProjections` will refuse."""
    if student_width == teacher_width:
        return "identity"
    if projection == "linear":
        return f"linear {student_width}->{teacher_width}"
    return f"none ({student_width} != {teacher_width})"


def _check_count(what: str, num: int) -> None:
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise UserError(f"hints.layers: the {what} must have at least one layer, got {num!r}")


def _uniform(num_student: int, num_teacher: int) -> list[tuple[int, int]]:
    # Student layer i sits at depth (i + 1) / L_s; it learns from the teacher layer at the same relative
    # depth, round((i + 1) * L_t / L_s) - 1, rounded half up in exact integer arithmetic (Python's round
    # rounds half to even). A student deeper than its teacher clamps at layer 0.
    return [
        (i, max((2 * (i + 1) * num_teacher + num_student) // (2 * num_student) - 1, 0))
        for i in range(num_student)
    ]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_layer(pair: object, what: str, index: int, num: int) -> None:
    if not 0 <= index < num:
        raise UserError(
            f"hints.layers: pair {pair}: {what} layer {index} does not exist "
            f"({what} has {num} layers: 0..{num - 1})"
        )


def _explicit(pairs: Sequence, num_student: int, num_teacher: int) -> list[tuple[int, int]]:
    if len(pairs) == 0:
        raise UserError("hints.layers: the list of [student, teacher] layer pairs is empty")
    out: list[tuple[int, int]] = []
    for position, pair in enumerate(pairs):
        shown = list(pair) if isinstance(pair, (list, tuple)) else pair
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_is_int(x) for x in pair)):
            raise UserError(
                f"hints.layers: item {position} ({shown!r}) is not a [student_layer, teacher_layer] pair "
                "of two integers"
            )
        s, t = pair
        _check_layer(shown, "student", s, num_student)
        _check_layer(shown, "teacher", t, num_teacher)
        if (s, t) in out:
            raise UserError(f"hints.layers: pair {shown} is listed twice")
        out.append((s, t))
    return out


def _copied(copied_layers: Sequence[int] | None, num_student: int, num_teacher: int) -> list[tuple[int, int]]:
    if copied_layers is None:
        raise UserError(
            "hints.layers: 'copied' needs the teacher layers the student was copied from, and none are "
            "known (the student was not made by shrinking the teacher); choose 'uniform' or list pairs"
        )
    copied = list(copied_layers)
    if len(copied) != num_student:
        raise UserError(
            f"hints.layers: 'copied' lists {len(copied)} teacher layers {copied} but the student has "
            f"{num_student} layers"
        )
    for j, t in enumerate(copied):
        if not _is_int(t):
            raise UserError(f"hints.layers: copied layer {t!r} (student layer {j}) is not an integer")
        _check_layer([j, t], "teacher", t, num_teacher)
    return list(enumerate(copied))


def resolve_layer_map(
    strategy: str | Sequence,
    num_student_layers: int,
    num_teacher_layers: int,
    *,
    copied_layers: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """The (student_layer, teacher_layer) pairs for a strategy.

    - "uniform": every student layer i learns from teacher layer round((i + 1) * L_t / L_s) - 1, so the
      student's layers spread evenly over the teacher's depth (30 -> 10: teacher 2, 5, ..., 29).
    - "last": [(L_s - 1, L_t - 1)].
    - "first_last": [(0, 0), (L_s - 1, L_t - 1)]; a one-layer student, whose first layer is its last,
      gets the single pair (0, L_t - 1).
    - "copied": student layer j -> `copied_layers[j]`, for a student made by copying teacher layers.
    - a list of [student, teacher] pairs, checked against both models' layer counts.

    Raises UserError for an unknown strategy or an invalid pair, naming the pair and the valid range.
    """
    _check_count("student", num_student_layers)
    _check_count("teacher", num_teacher_layers)
    if not isinstance(strategy, str):
        if isinstance(strategy, Sequence):
            return _explicit(strategy, num_student_layers, num_teacher_layers)
        raise UserError(
            f"hints.layers must be one of {', '.join(STRATEGIES)} or a list of [student, teacher] pairs; "
            f"got {strategy!r}"
        )
    last = (num_student_layers - 1, num_teacher_layers - 1)
    if strategy == "uniform":
        return _uniform(num_student_layers, num_teacher_layers)
    if strategy == "last":
        return [last]
    if strategy == "first_last":
        return [last] if num_student_layers == 1 else [(0, 0), last]
    if strategy == "copied":
        return _copied(copied_layers, num_student_layers, num_teacher_layers)
    raise UserError(
        f"hints.layers: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)} "
        "or give a list of [student, teacher] layer pairs"
    )


def format_layer_map(
    pairs: Sequence[tuple[int, int]],
    student_widths: Widths,
    teacher_widths: Widths,
    projection: str,
) -> str:
    """A printable table of the mapping: student layer, teacher layer, widths and projection per pair.

    Widths are one int for every layer or per-layer lists (indexed by layer).
    """
    header = ("student layer", "teacher layer", "widths", "projection")
    rows = [header]
    for s, t in pairs:
        d_s, d_t = width_of(student_widths, s), width_of(teacher_widths, t)
        rows.append((str(s), str(t), f"{d_s} -> {d_t}", projection_kind(d_s, d_t, projection)))
    sizes = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(size) for cell, size in zip(row, sizes, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)
