"""nbval settings: stderr carries only progress bars (tqdm), which differ run to run."""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
