"""The parts a training run is composed of, each built once from the config by `lmdistill.training.run`:

- `data`: the run's rows, tokenized (one tokenization, or both tokenizations aligned for a teacher
  with another tokenizer), and their fingerprint;
- `teacher`: where the teacher's scores come from (nobody, the model in this process, a capture store,
  a server), chosen and checked before any weights load;
- `models`: the student (its own model or the teacher shrunk) and, when it runs in this process, the
  teacher, with their shared vocabulary;
- `sampler`: where each step's sequences come from (the data, or the student's own samples on-policy);
- `launcher`: how the student is placed (one process or DDP, or sharded with FSDP2) and saved.

`lmdistill.training.assemble.make_trainer` composes them into one `DistillTrainer`; a new mode (a
vLLM sampler, several teachers) is a new part, not a branch in the recipe.
"""
