"""The benchmark scripts' helper layer (not a program, not part of alberta).

- `harness`: shapes and devices from flags, timing, resident and compiled
  memory, agreement of two matrices;
- `machine`: the machine, the software and the devices of a run;
- `suite`: the methods and what the benchmark runs at each shape;
- `layer`: the everyday path (import, a small Haiku MLP, chunking, cores), each
  measurement in a fresh process; it imports no JAX at module level;
- `ratios`: the ratios the counter method is held to, with their targets;
- `report`: the tables, as text and as Markdown, from one column list, and the
  command that regenerates them;
- `plot`: the benchmark's figure, from one run or merged `--json` runs.

Scripts import it as `scripts.benchlib`, with the repository root on
`sys.path` (each script puts it there), like `third_party.alberta_framework`.
"""
