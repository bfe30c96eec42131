"""Continuous futures: the project's own roll of stored dated contracts into one series (`build`), under a declared
roll rule (`rules`) and back-adjustment, and IB's own CONTFUT series stored beside it (`ib_series`)."""
