"""The sub-commands of ``stmwatch train``, ``eval`` and ``bench``: their command-line halves
(``HELP``, ``add_arguments(parser)``, ``run(args) -> int``). The work they drive -- training,
scoring, timing -- lives in ``models`` and takes settings objects, never the daemon's config."""
