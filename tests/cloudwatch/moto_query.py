#!/usr/bin/env python3
"""Reads back what a CloudWatch-compatible server (moto, on loopback) holds for a namespace.

    moto_query.py ENDPOINT NAMESPACE

Prints one JSON object:
  {"metrics": [{"name": str, "dimensions": {name: value}}],            # ListMetrics
   "stats":   [{"name", "dimensions", "sum", "samples", "min", "max"}], # GetMetricStatistics
   "invocations_get_metric_data": float | null}                        # GetMetricData (Sum)

Every datum of the last hour is covered (one period of a day). Credentials and region are
the fake ones the tests use; the endpoint is always 127.0.0.1.
"""
import datetime as dt
import json
import sys

import boto3


def main() -> None:
    endpoint, namespace = sys.argv[1], sys.argv[2]
    cw = boto3.client(
        "cloudwatch",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
    )
    metrics = []
    for page in cw.get_paginator("list_metrics").paginate(Namespace=namespace):
        for m in page["Metrics"]:
            dims = {d["Name"]: d["Value"] for d in m.get("Dimensions", [])}
            metrics.append({"name": m["MetricName"], "dimensions": dims})

    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(minutes=5)
    stats = []
    seen = set()
    for m in metrics:
        key = (m["name"], tuple(sorted(m["dimensions"].items())))
        if key in seen:
            continue
        seen.add(key)
        out = cw.get_metric_statistics(
            Namespace=namespace,
            MetricName=m["name"],
            Dimensions=[{"Name": k, "Value": v} for k, v in m["dimensions"].items()],
            StartTime=start,
            EndTime=end,
            Period=86400,
            Statistics=["Sum", "SampleCount", "Minimum", "Maximum"],
        )
        points = out["Datapoints"]
        stats.append(
            {
                "name": m["name"],
                "dimensions": m["dimensions"],
                "sum": sum(p["Sum"] for p in points),
                "samples": sum(p["SampleCount"] for p in points),
                "min": min((p["Minimum"] for p in points), default=None),
                "max": max((p["Maximum"] for p in points), default=None),
            }
        )

    # moto matches GetMetricStatistics dimensions as a subset (CloudWatch matches them
    # exactly), so a [FunctionName] query also returns the [FunctionName, Destination] data.
    # Subtract those to get what CloudWatch itself would answer. Min/Max can't be corrected
    # that way: they are dropped where a wider dimension set exists.
    for st in stats:
        wider = [
            o for o in stats
            if o["name"] == st["name"]
            and len(o["dimensions"]) > len(st["dimensions"])
            and all(o["dimensions"].get(k) == v for k, v in st["dimensions"].items())
        ]
        if wider:
            st["sum"] -= sum(o["sum"] for o in wider)
            st["samples"] -= sum(o["samples"] for o in wider)
            st["min"] = st["max"] = None

    invocations = None
    fn = next(
        (m["dimensions"] for m in metrics
         if m["name"] == "invocations" and list(m["dimensions"]) == ["FunctionName"]),
        None,
    )
    if fn is not None:
        out = cw.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "inv",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": namespace,
                            "MetricName": "invocations",
                            "Dimensions": [{"Name": k, "Value": v} for k, v in fn.items()],
                        },
                        "Period": 86400,
                        "Stat": "Sum",
                    },
                }
            ],
            StartTime=start,
            EndTime=end,
        )
        invocations = sum(out["MetricDataResults"][0]["Values"])

    print(json.dumps({"metrics": metrics, "stats": stats,
                      "invocations_get_metric_data": invocations}))


if __name__ == "__main__":
    main()
