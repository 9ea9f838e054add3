"""The launcher's helper layer (not a program, not part of alberta).

`scripts/init_large.py` is the program; what it needs besides alberta's
public API lives here:

- `options`: the flags, defined on any `FlagValues`, and the checks absl runs
  before JAX starts;
- `devices`: starting JAX (and its multi-process runtime), the mesh;
- `exits`: one-line errors, exit without waiting for orbax's threads,
  SIGINT/SIGTERM handling, quiet orbax logs;
- `run`: the run's plan (what is generated, on which mesh), its log lines,
  compilation, generation, verification and save, checkpoint metadata and
  report fields;
- `report`: sizes, the save's progress line, peak memory, the report file.

Imports follow `scripts.benchlib`'s rule: each module imports what it uses at
its top, and nothing is handed a module as an argument. `options` and `exits`
run before the flags are checked, so they do not import JAX (each imports
alberta inside the one function that needs it); `devices`, `run` and `report`
import JAX and alberta, so the launcher imports them once absl has checked
the flags. Importing JAX starts no backend: `devices.start_jax` still
configures the devices first.

Imported as `scripts.launchlib`, with the repository root on `sys.path` (the
launcher puts it there), like `scripts.benchlib`.
"""
