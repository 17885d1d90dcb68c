"""nbval settings: stderr is not compared. It carries messages a fresh machine prints once (for
example matplotlib building its font cache). Whether the portable kernels are in force is
printed on stdout by every notebook's setup cell, so nbval still catches an unpinned run."""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
