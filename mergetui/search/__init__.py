"""Search: find per-layer merge weights automatically (`mergetui evolve`, the app's Search screen).

The pieces, each with one home:

- `spec.py`      the `[search]` table (or a mergekit-evolve config) read into a `SearchSpec`, every
                 parameter, bound, group and objective checked before any model is loaded
- `genome.py`    the map between CMA-ES's flat vector and a recipe with per-layer gradients
- `evaluator.py` parents loaded once; each candidate merged in memory into a resident model by the
                 same method functions as `mergetui merge`, then scored (`objectives.py`)
- `backends`     where candidates are scored: in this process (`backend_local.py`) or on a Ray
                 cluster (`backend_ray.py`, optional extra `ray`)
- `loop.py`      CMA-ES (the `cma` package), resume from `evaluations.jsonl`, the best files
                 (`outputs.py`), events (`events.py`) for the CLI and the app

Nothing here imports textual; torch, cma and ray are imported inside the functions that need them.
"""
