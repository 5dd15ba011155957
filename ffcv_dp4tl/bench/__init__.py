"""Benches: loops over :func:`~ffcv_dp4tl.pipeline.run.run_pipeline` that print tables, draw plots
and write a BENCHMARKS.md section.

* :mod:`.cost_table` — every (method, ratio, seed) → cost table, accuracy vs ratio (Tab. 3, 4,
  Fig. 4); its statistics (:mod:`.stats`), Markdown (:mod:`.markdown`) and plots (:mod:`.plots`);
  its ``results.json`` checked where it is read back (:mod:`.cost_results`);
  method variants ``fm[k=16]``, ``lm[reversed]`` (:mod:`.variants`, Fig. A2/A3);
* :mod:`.separation` — the embedded benchmark (``dp4tl bench embedded``): LM/FM vs RANDOM,
  a paired test over seeds x targets on data with ground truth;
* :mod:`.surrogates` — surrogate size (Tab. A6, Fig. 5);
* :mod:`.adversarial` — adversarial pretraining on full and pruned sources (Tab. 5).

The CLI (:mod:`ffcv_dp4tl.cli.bench`) only parses arguments into these functions.
"""
