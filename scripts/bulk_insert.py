#!/usr/bin/env python3
"""pymongo's insert_many of BSON documents from a file, in batches, one after another: the
plain bulk-insert client that examples/archive_bench.rs compares the archiver with.

    .venv/bin/python scripts/bulk_insert.py URI DATABASE COLLECTION FILE BATCH

FILE holds the documents as concatenated BSON. Prints one JSON line: documents, seconds, rate.
"""
import json
import sys
import time

import bson
import pymongo


def main():
    uri, database, collection, path, batch = sys.argv[1:6]
    batch = int(batch)
    with open(path, "rb") as f:
        documents = bson.decode_all(f.read())
    target = pymongo.MongoClient(uri)[database][collection]
    started = time.perf_counter()
    for i in range(0, len(documents), batch):
        target.insert_many(documents[i : i + batch], ordered=False)
    seconds = time.perf_counter() - started
    print(json.dumps({"documents": len(documents), "seconds": seconds, "per_s": len(documents) / seconds}))


if __name__ == "__main__":
    main()
