"""The Hydra app behind the ``modelfactory`` command (a thin shell over the Python API).

``job``: one job (build / restore / verify) and the sample-output checksum;
``train``, ``tasks``: the optional short training run (``train=``) and its coordinate check;
``report``, ``plot``: the sweep report (``sweep.csv``, ``sweep.png``, a ranked table);
``callbacks``: the Hydra ``Callback`` that writes that report after a multirun;
``progress``: terminal progress displays that stay quiet when output is not a TTY;
``startup``: the console script's handling of the garbage collector while it starts.
"""
