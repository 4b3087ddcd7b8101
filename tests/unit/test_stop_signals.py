"""A stop asked for while the tickers run is heard at once, whichever thread the kernel hands the signal to."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flows.daily import results_hearing_signals


def test_a_signal_delivered_to_a_worker_thread_is_handled_while_the_main_thread_waits():
    heard = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: heard.set())
    try:

        def ticker() -> bool:
            time.sleep(0.5)  # the main thread is waiting by now
            # As the kernel may do with a process's SIGINT: to this thread, not the main one.
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            return heard.wait(timeout=10)  # a ticker checks the stop flag at its next epoch

        with ThreadPoolExecutor(1) as pool:
            (stopped_in_time,) = results_hearing_signals([pool.submit(ticker)])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stopped_in_time, "the handler ran only after the ticker had finished"
