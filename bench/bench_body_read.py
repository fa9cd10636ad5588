"""How long settlement takes to read our tag from a ``submit.sm.*`` body, beside a bare
``pickle.loads`` of the same body, for each pickle protocol Jasmin may use.

Stock jasmind gives settlement no other way to the tag of a message charged by the drop-in
interceptord: it reads the pickled SubmitSM (``settlement.load_submit_sm``, which builds inert
stand-ins and runs no Jasmin code). Jasmin pickles with ``[client-management]
pickle_protocol``, 2 by default. Also printed: the same read through a plain ``BytesIO`` (how
``load_submit_sm`` read every body until the tenth session).

    PYTHONPATH=. .venv/bin/python bench/bench_body_read.py [--rounds 5] [--number 3000]
"""

from __future__ import annotations

import argparse
import io
import pickle
import statistics
import timeit

from smpp.pdu.operations import SubmitSM
from smpp.pdu.pdu_types import (
    AddrNpi,
    AddrTon,
    DataCoding,
    EsmClass,
    EsmClassMode,
    EsmClassType,
    PriorityFlag,
    RegisteredDelivery,
    RegisteredDeliveryReceipt,
)

from jasmin_credits.settlement import (
    _PduUnpickler,
    lease_field,
    load_submit_sm,
    read_tag,
    tag_pdu,
)


def tagged_submit_sm() -> SubmitSM:
    """A SubmitSM as the drop-in interceptord leaves it: every field Jasmin sets, our tag
    with a lease on it."""
    pdu = SubmitSM(
        1, source_addr=b"alice", destination_addr=b"33612345678",
        short_message=b"hello world " * 5,
        registered_delivery=RegisteredDelivery(
            RegisteredDeliveryReceipt.SMSC_DELIVERY_RECEIPT_REQUESTED),
        source_addr_ton=AddrTon.NATIONAL, source_addr_npi=AddrNpi.ISDN,
        dest_addr_ton=AddrTon.INTERNATIONAL, dest_addr_npi=AddrNpi.ISDN,
        esm_class=EsmClass(EsmClassMode.DEFAULT, EsmClassType.DEFAULT),
        data_coding=DataCoding(), priority_flag=PriorityFlag.LEVEL_0)
    tag_pdu(pdu, "alice", "1764241234567-abcdef", 1,
            lease_field("1764241234567-lease1", 800, 1, "FR 33612345678 336 world"))
    return pdu


def interleaved_us(calls: dict[str, object], number: int, rounds: int) -> dict[str, list]:
    """Each call timed ``number`` times per round, the calls interleaved round by round (so
    a slow moment of the machine hits all of them): µs per call, by name, round by round."""
    times: dict[str, list] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(timeit.timeit(call, number=number) / number * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=3000)
    args = parser.parse_args()
    pdu = tagged_submit_sm()
    print("medians of interleaved rounds; ratios: the median of each round's")
    print("| protocol | body bytes | pickle.loads µs | load_submit_sm + read_tag µs "
          "| vs pickle.loads | through BytesIO µs (before) | vs pickle.loads |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for protocol in (2, 3, 4, 5):
        body = pickle.dumps(pdu, protocol)
        t = interleaved_us({
            "bare": lambda body=body: pickle.loads(body),
            "ours": lambda body=body: read_tag(load_submit_sm(body)),
            "before": lambda body=body: read_tag(_PduUnpickler(io.BytesIO(body)).load()),
        }, args.number, args.rounds)

        ratio = {name: statistics.median(a / b for a, b in zip(t[name], t["bare"], strict=True))
                 for name in t}
        med = {name: statistics.median(values) for name, values in t.items()}
        print(f"| {protocol} | {len(body):,} | {med['bare']:.1f} | {med['ours']:.1f} "
              f"| {ratio['ours']:.2f}x | {med['before']:.1f} | {ratio['before']:.2f}x |")


if __name__ == "__main__":
    main()
