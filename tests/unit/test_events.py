import threading

from wtb_ray.domain.events import Event, EventBus


def test_subscribers_receive_matching_kinds_and_can_unsubscribe():
    bus = EventBus()
    seen, only_done = [], []
    unsubscribe = bus.subscribe(seen.append)
    bus.subscribe(only_done.append, {"execution.completed"})
    bus.publish([Event("node.completed", "e1"), Event("execution.completed", "e1")])
    unsubscribe()
    bus.publish([Event("execution.completed", "e2")])
    assert [e.kind for e in seen] == ["node.completed", "execution.completed"]
    assert [e.execution_id for e in only_done] == ["e1", "e2"]


def test_a_failing_handler_does_not_stop_the_others():
    bus = EventBus()
    got = []

    def broken(event):
        raise RuntimeError("handler bug")

    bus.subscribe(broken)
    bus.subscribe(got.append)
    bus.publish([Event("x", "e")])
    assert len(got) == 1


def test_concurrent_publish_and_subscribe_lose_nothing():
    bus = EventBus()
    counts = [0]
    lock = threading.Lock()

    def count(event):
        with lock:
            counts[0] += 1

    bus.subscribe(count)
    churn_stop = threading.Event()

    def churn():  # subscribe/unsubscribe constantly while others publish
        while not churn_stop.is_set():
            bus.subscribe(lambda e: None)()

    def publish():
        for i in range(2000):
            bus.publish([Event("k", str(i))])

    churner = threading.Thread(target=churn)
    churner.start()
    publishers = [threading.Thread(target=publish) for _ in range(4)]
    for t in publishers:
        t.start()
    for t in publishers:
        t.join()
    churn_stop.set()
    churner.join()
    assert counts[0] == 8000
