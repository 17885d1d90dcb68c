"""The reproduction machinery: what a profile trains, how it is tuned and judged, and what is written.

``profiles`` and ``plan``/``confirm`` (which models), ``tuning`` and ``convergence`` (the
protocols, validation only), ``rules`` and ``verdicts`` (the written rules and their
arithmetic), ``results``, ``findings`` and ``plots`` (what a reader sees), ``reproduce`` (the
notebooks through papermill) and ``archive`` (models in and out of the repository).
"""
