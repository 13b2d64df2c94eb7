"""Example 2 — memory allocation (the seed's second usage example), as leases.

An allocation is a lease: a row in the database with an expiry, honoured by every process
on the same database and still there after a restart. It is refused, never oversubscribed,
when it does not fit.

    python examples/02_memory_allocation.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gpuhistory import GPUManager


def run(db: str) -> None:
    with GPUManager(db=db, backend="sim") as manager:
        print(f"available on GPU 0: {manager.get_available_memory()} MiB")

        ok = manager.allocate_memory("llm_model", 2048, ttl_seconds=600, owner="example")
        print(f"allocate llm_model 2048 MiB: {ok}")
        print(f"available on GPU 0: {manager.get_available_memory()} MiB")

        # The same id twice, or more than is left, is refused (False), never oversubscribed.
        print(f"allocate llm_model again: {manager.allocate_memory('llm_model', 1024)}")
        too_much = manager.get_available_memory() + 1
        print(f"allocate {too_much} MiB: {manager.allocate_memory('huge', too_much)}")

        memory = manager.get_gpu_status()["memory"]
        print(f"GPU 0 leases: {memory['active_leases']} active, {memory['leased_mb']} of "
              f"{memory['capacity_mb']} MiB leased (card {memory['device_total_mb']} MiB "
              f"minus a {memory['memory_reserve_mb']} MiB reserve)")
        for lease in manager.leases.list(status="active"):
            print(f"  {lease.allocation_id}: {lease.memory_mb} MiB, owner {lease.owner}, "
                  f"renew before {lease.to_dict(manager.clock.now_ms())['expires_at']}")

        print(f"renew llm_model: {manager.renew_memory('llm_model', ttl_seconds=900)}")
        print(f"deallocate llm_model: {manager.deallocate_memory('llm_model')}")
        print(f"deallocate llm_model again: {manager.deallocate_memory('llm_model')}")
        print(f"available on GPU 0: {manager.get_available_memory()} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to use (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.db or str(Path(tmp) / "example.db"))


if __name__ == "__main__":
    main()
