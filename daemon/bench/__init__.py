"""Speed benchmarks of the whole chain (``stmwatch bench preprocess|pipeline|all``), as ratios
measured in one run; the per-model ones live beside their models (``bench segment``, ``classify``)."""
