"""Starting and driving the whole system from outside: the dev server, the API served in-process, waiting, numbers; for `make dev`, the tests and the benchmarks."""
