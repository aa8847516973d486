"""The STM simulator: scans of known surfaces with their ground truth (training and test data).

It stands apart from inference: it imports only :mod:`stmwatch.drivers` (``Scan``, the ``.sxm``
writer) and the leaf modules :mod:`stmwatch.models.surfaces` and :mod:`stmwatch.models.robust`;
nothing that segments or classifies imports it (``import-linter`` checks both).

- :mod:`.simulate` -- the API: :func:`~.simulate.simulate_scan`, truth, files, datasets, crops;
- :mod:`.sample` -- the sample: lattices, steps, domains and defects as functions of position (nm);
- :mod:`.artefacts` -- tip and scanner artefacts in acquisition order.
"""
