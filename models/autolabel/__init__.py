"""Auto-labelling (part 1 of the method): defect masks from a lab's own unlabelled scans.

:mod:`.features` (per-pixel features: a filter bank, a UNet's encoder, any TorchScript file),
:mod:`.kmeans`, :mod:`.label` (clusters at several resolutions → defect mask), :mod:`.planted` (a detector
trained on the scans with planted synthetic defects), :mod:`.preview`,
:mod:`.command` (``stmwatch autolabel``), :mod:`.evaluate` (F1 against simulator truth).
"""

DEFAULT_K = 32  # clusters at each resolution (chosen with label.Rule's defaults on tuning seeds 8 700 000-8 700 019; 16 before)
CONFIDENT = 0.7  # planted-defect detector: defects at least this sure are auto-labels (tuning scans: best mean F1 of 0.5-0.8)
MEMBERS = 2  # planted-defect detectors trained (seeds seed, seed+1, ...) and averaged (docs/autolabel.md, stop 30: +0.012 on training-style scans, lower on the foreign style)
