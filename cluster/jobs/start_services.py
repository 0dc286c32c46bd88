"""Job entrypoint: start the outbox relay, the event feed and the integrity cron on this
cluster (named, detached actors in namespace "wtb"; a second run finds them running).

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        -- python -m cluster.jobs.start_services [--db URL]

Set WTB_WEBHOOK_SECRET in the cluster's environment (not on this command line) if batches
use webhooks without a secret of their own.
"""

from __future__ import annotations

import argparse
import json
import sys

import ray

from actors import client, event_feed, integrity_cron, outbox_relay
from wtb_ray.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start WTB's relay, feed and integrity cron.")
    parser.add_argument("--db", help="database URL (default: WTB_DATABASE_URL or ~/.wtb)")
    args = parser.parse_args(argv)
    settings = Settings().with_database(args.db)
    client.connect("auto")
    feed = event_feed.get_or_create(settings)
    relay = outbox_relay.get_or_create(settings)
    cron = integrity_cron.get_or_create(settings)
    ray.get([feed.stats.remote(), relay.stats.remote(), cron.last.remote()], timeout=120)
    print(json.dumps({"event_feed": settings.event_feed_name,
                      "outbox_relay": settings.outbox_relay_name,
                      "integrity_cron": settings.integrity_cron_name,
                      "integrity_interval_seconds": settings.integrity_interval_seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
