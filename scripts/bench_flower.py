"""Times Flower's own SecAgg+ stages in one process, for scripts/bench-flower.sh.

For each configuration `n:k:m:dropout` (k = neighbours of each client, as in
`cargo bench -p tessera-secagg --bench rounds`) this runs Flower's client stage
functions (`flwr.client.mod.secure_aggregation.secaggplus_mod`: setup, share_keys,
collect_masked_vectors, unmask) for every client, routing their messages the way
Flower's server workflow does, and then the server's unmasking: every secret is
rebuilt with Flower's `combine_shares` and its mask removed with Flower's
`pseudo_rand_gen`, `generate_shared_key` and array arithmetic, the steps of
`SecAggPlusWorkflow.unmask_stage`. The result is checked against the plain sum.

Printed, one JSON object per line: the median time of one client's masking stage
(collect_masked_vectors: decrypt its shares, quantise, expand and add k + 1 masks) and
the server's unmasking time, both single-threaded (NumPy and `cryptography`).
"""

import json
import random
import statistics
import sys
import time

import numpy as np
import importlib

client = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

MOD_RANGE = 1 << 20  # the 20-bit ring of Tessera's rounds bench
TARGET_RANGE = 1 << 16
CLIP = 1.0
TIMED_CLIENTS = 5


def ring_neighbours(ids, share_num):
    """Flower's SecAgg+ graph: a shuffled ring, each node with the share_num - 1
    nearest (itself included in its own set)."""
    order = list(ids)
    random.Random(1).shuffle(order)
    half = share_num >> 1
    n = len(order)
    return {
        nid: {order[(i + off) % n] for off in range(-half, half + 1)}
        for i, nid in enumerate(order)
    }


def run(n, k, m, dropout):
    share_num = min(k + 1, n)
    if share_num < n and share_num % 2 == 0:
        share_num += 1  # Flower requires an odd number of shares below n
    threshold = share_num // 2 + 1
    ids = list(range(1, n + 1))
    graph = ring_neighbours(ids, share_num)
    states = {nid: client.SecAggPlusState(nid=nid) for nid in ids}
    setup = {
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: share_num,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: CLIP,
        Key.TARGET_RANGE: TARGET_RANGE,
        Key.MOD_RANGE: MOD_RANGE,
        Key.MAX_WEIGHT: 1.0,
    }
    keys = {nid: client._setup(states[nid], setup) for nid in ids}
    outbox = {}
    for nid in ids:
        view = {str(j): (keys[j][Key.PUBLIC_KEY_1], keys[j][Key.PUBLIC_KEY_2]) for j in sorted(graph[nid])}
        outbox[nid] = client._share_keys(states[nid], view)
    inbox = {nid: ([], []) for nid in ids}
    for src in ids:
        for dst, ct in zip(outbox[src][Key.DESTINATION_LIST], outbox[src][Key.CIPHERTEXT_LIST]):
            inbox[dst][0].append(src)
            inbox[dst][1].append(ct)
    rng = np.random.default_rng(7)
    updates = {nid: rng.uniform(-0.5, 0.5, m).astype(np.float32) for nid in ids}
    dropped = set(ids[n - round(dropout * n):]) if dropout > 0 else set()
    masked, times = {}, []
    for nid in ids:
        if nid in dropped:
            continue
        params = ndarrays_to_parameters([updates[nid]])
        cfg = {Key.SOURCE_LIST: inbox[nid][0], Key.CIPHERTEXT_LIST: inbox[nid][1]}
        start = time.perf_counter()
        out = client._collect_masked_vectors(states[nid], cfg, 1, params)
        if len(times) < TIMED_CLIENTS:
            times.append(time.perf_counter() - start)
        masked[nid] = [bytes_to_ndarray(b).astype(np.int64) for b in out[Key.MASKED_PARAMETERS]]
    active = sorted(masked)
    shapes = [a.shape for a in masked[active[0]]]
    total = [sum(masked[a][i] for a in active) % MOD_RANGE for i in range(len(shapes))]
    # Clients answer the unmask request; the server collects shares per owner.
    shares = {nid: [] for nid in ids}
    for nid in active:
        req = {
            Key.ACTIVE_NODE_ID_LIST: [j for j in sorted(graph[nid]) if j in masked],
            Key.DEAD_NODE_ID_LIST: [j for j in sorted(graph[nid]) if j not in masked],
        }
        out = client._unmask(states[nid], req)
        for owner, share in zip(out[Key.NODE_ID_LIST], out[Key.SHARE_LIST]):
            shares[owner].append(share)
    start = time.perf_counter()
    result = server_unmask(total, shares, masked, graph, keys, shapes)
    unmasking = time.perf_counter() - start
    check(result, updates, active)
    return {
        "protocol": "SecAgg+" if share_num < n else "SecAgg",
        "n": n,
        "m": m,
        "dropout": dropout,
        "k": share_num - 1,
        "t": threshold,
        "site_masking_ms": statistics.median(times) * 1e3,
        "unmasking_ms": unmasking * 1e3,
    }


def server_unmask(total, shares, masked, graph, keys, shapes):
    """Flower's server-side unmasking: rebuild each secret from its shares and remove
    the masks it seeds (a survivor's self mask, a dropped client's pairwise masks)."""
    vec = [a.copy() for a in total]
    for owner, share_list in shares.items():
        if not share_list:
            continue
        secret = combine_shares(share_list)
        if owner in masked:
            for v, mask in zip(vec, pseudo_rand_gen(secret, MOD_RANGE, shapes)):
                v -= mask
            continue
        for peer in sorted(graph[owner] - {owner}):
            if peer not in masked:
                continue
            key = generate_shared_key(
                bytes_to_private_key(secret), bytes_to_public_key(keys[peer][Key.PUBLIC_KEY_1])
            )
            # The survivor added the pairwise mask when its id is the larger one.
            sign = -1 if peer > owner else 1
            for v, mask in zip(vec, pseudo_rand_gen(key, MOD_RANGE, shapes)):
                v += sign * mask
    return [v % MOD_RANGE for v in vec]


def check(result, updates, active):
    """The unmasked sum against the sum of what each client quantised: Flower rounds
    (x + clip) · q / (2 clip) stochastically, so each client is within one step."""
    factor, values = result[0][0], result[1]
    if factor != len(active) * TARGET_RANGE % MOD_RANGE:
        sys.exit(f"weight factor {factor}: Flower's unmasked sum is wrong (driver error)")
    scale = TARGET_RANGE / (2 * CLIP)
    expected = sum((updates[a].astype(np.float64) + CLIP) * scale for a in active)
    # Distance on the ring: the sum of many clients wraps mod 2^20, as Tessera's does.
    d = (values - expected) % MOD_RANGE
    err = np.max(np.minimum(d, MOD_RANGE - d))
    if err > len(active):
        sys.exit(f"Flower's unmasked sum is off by {err} steps: the driver is wrong")


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        n, k, m, dropout = spec.split(":")
        print(json.dumps(run(int(n), int(k), int(m), float(dropout))), flush=True)
