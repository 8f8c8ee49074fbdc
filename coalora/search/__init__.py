"""Configuration search: ILP allocation, GP surrogate, acquisition, segmented Pareto selection.

Modules (import what you need; botorch is imported only inside gp / acquisition functions):
  costs        quantization error per (matrix, setting), cached on disk / in assets/
  allocate     the integer program of docs/design.md, "Search" (scipy milp / HiGHS)
  pareto       non-dominated filtering, segmented Pareto selection, hypervolume
  gp           BoTorch SingleTaskGP surrogate of f1 on the configuration encoding
  acquisition  log-EHVI over (f1, exact avg_bits) and discrete local search
  front        the GP-predicted front for a grid of bit budgets (JSON for the app)
  loop         search(objective, space, initial, iterations) -> segmented Pareto set
  target_alloc allocation inside a deployment target (its formats, real bytes)
  target_search the Pareto search inside a deployment target (its own GP features, discrete proposals)
"""
