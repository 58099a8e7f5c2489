"""Plots scripts/soak.sh's per-minute CSV: throughput, pick-up latency, worker RSS, table sizes."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
minute = [int(r["minute"]) for r in rows]
fig, ax = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
ax[0].plot(minute, [float(r["emails_per_s"]) for r in rows], marker="o")
ax[0].set_ylabel("emails/s sent")
ax[1].plot(minute, [float(r["pickup_p50_ms"]) for r in rows], marker="o", label="p50")
ax[1].plot(minute, [float(r["pickup_p99_ms"]) for r in rows], marker="o", label="p99")
ax[1].set_ylabel("pick-up, ms")
ax[1].set_yscale("log")
ax[1].legend()
for key in [k for k in rows[0] if k.startswith("rss_worker")]:
    ax[2].plot(minute, [float(r[key]) for r in rows], marker="o", label=key.replace("_mib", ""))
ax[2].set_ylabel("worker RSS, MiB")
ax[2].set_ylim(bottom=0)
ax[2].legend()
ax[3].plot(minute, [float(r["jobs_mib"]) for r in rows], marker="o", label="apalis.jobs")
ax[3].plot(minute, [float(r["deliveries_mib"]) for r in rows], marker="o", label="email_deliveries")
ax[3].set_ylabel("table size, MiB")
ax[3].set_xlabel("minute")
ax[3].legend()
fig.suptitle("Herald soak (scripts/soak.sh)")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
