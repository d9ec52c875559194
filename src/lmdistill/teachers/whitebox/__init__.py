"""White-box teachers behind one interface (`TeacherSource`): token ids and positions in, what the loss
needs out (see `source`). Three sources:

- `InProcessTeacher` (`local`): the teacher model in this process -> final hidden states + head (dense);
- `StoreTeacher` (`local`): a store from `lmdistill capture` -> top-k + tail rows by example index;
- `ServerTeacher` (`server`): an OpenAI-compatible server (vLLM, `lmdistill serve`) -> top-k + tail.

Several teachers are one more source, `SeveralTeachers` (`several`): rows routed to their teacher (any
of the three kinds), or in-process teachers mixed per token (`mixture`); `teacher_loss` (`routed_loss`)
is the loss against any answer, routed ones included.

The black-box text `Teacher` (`lmdistill.teachers.types`) stays the generation interface.
"""

from lmdistill.teachers.whitebox.local import InProcessTeacher, StoreTeacher
from lmdistill.teachers.whitebox.routed_loss import teacher_loss
from lmdistill.teachers.whitebox.server import ServerTeacher, check_server_settings
from lmdistill.teachers.whitebox.several import Member, SeveralTeachers
from lmdistill.teachers.whitebox.source import (
    RoutedPart,
    TeacherQuery,
    TeacherScores,
    TeacherSource,
    tail_from_topk,
    topk_rows,
)

__all__ = [
    "InProcessTeacher",
    "Member",
    "RoutedPart",
    "ServerTeacher",
    "SeveralTeachers",
    "StoreTeacher",
    "TeacherQuery",
    "TeacherScores",
    "TeacherSource",
    "check_server_settings",
    "tail_from_topk",
    "teacher_loss",
    "topk_rows",
]
