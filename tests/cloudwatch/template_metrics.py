#!/usr/bin/env python3
"""Lists every CloudWatch metric a CloudFormation/SAM template's dashboards and alarms name.

    template_metrics.py TEMPLATE

Decodes the template with cfn-lint's loader (it understands !Sub, !Ref, !If ...) and prints:
  {"dashboards": [{"resource", "widgets": [{"title", "metrics": [{"namespace", "name",
      "dimensions": [names], "stat", "id"}], "expressions": [{"expression", "id"}]}]}],
   "alarms": [{"resource", "metrics": [...], "expressions": [...], "stat", "threshold",
      "comparison"}],
   "deployments": [{"function", "type", "alarms": [resource names]}],
   "parameters": {name: default},
   "errors": [str]}
A metric's "dimension_values" are the template's values (a string, or an intrinsic such as
{"Fn::GetAtt": [...]}) in the order of "dimensions".
A metric row using the "." / "..." shorthand is reported as an error: write rows out in full
so they can be checked.
"""
import json
import re
import sys

from cfnlint.decode import decode


def sub_text(body):
    """The template text of a DashboardBody: a string, {"Fn::Sub": str | [str, map]}."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and "Fn::Sub" in body:
        sub = body["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    raise ValueError(f"unsupported DashboardBody: {type(body).__name__}")


def dashboard(name, props, errors):
    text = re.sub(r"\$\{[^}]*\}", "SUBSTITUTED", sub_text(props["DashboardBody"]))
    body = json.loads(text)
    widgets = []
    for w in body.get("widgets", []):
        if w.get("type") != "metric":
            continue
        p = w.get("properties", {})
        out = {"title": p.get("title", ""), "metrics": [], "expressions": []}
        for row in p.get("metrics", []):
            opts = row[-1] if row and isinstance(row[-1], dict) else {}
            plain = [x for x in row if not isinstance(x, dict)]
            if not plain:
                out["expressions"].append({"expression": opts.get("expression", ""),
                                           "id": opts.get("id")})
                continue
            if any(x in (".", "...") for x in plain):
                errors.append(f"{name}: widget {out['title']!r} uses metric shorthand: {row}")
                continue
            if len(plain) < 2 or len(plain) % 2:
                errors.append(f"{name}: widget {out['title']!r}: bad metric row {row}")
                continue
            out["metrics"].append({
                "namespace": plain[0],
                "name": plain[1],
                "dimensions": plain[2::2],
                "stat": opts.get("stat", p.get("stat", "Average")),
                "id": opts.get("id"),
            })
        widgets.append(out)
    return {"resource": name, "widgets": widgets}


def metric_of(m):
    return {
        "namespace": m.get("Namespace"),
        "name": m.get("MetricName"),
        "dimensions": [d.get("Name") for d in m.get("Dimensions", [])],
        "dimension_values": [d.get("Value") for d in m.get("Dimensions", [])],
    }


def alarm(name, props):
    out = {"resource": name, "metrics": [], "expressions": [],
           "stat": props.get("ExtendedStatistic") or props.get("Statistic"),
           "threshold": props.get("Threshold"),
           "comparison": props.get("ComparisonOperator")}
    if "MetricName" in props:
        out["metrics"].append(dict(metric_of(props), stat=out["stat"], id=None))
    for q in props.get("Metrics", []):
        if "Expression" in q:
            out["expressions"].append({"expression": q["Expression"], "id": q.get("Id"),
                                       "returns": q.get("ReturnData", True)})
        elif "MetricStat" in q:
            ms = q["MetricStat"]
            out["metrics"].append(dict(metric_of(ms["Metric"]), stat=ms.get("Stat"),
                                       id=q.get("Id")))
    return out


def main():
    template, matches = decode(sys.argv[1])
    errors = [str(m) for m in matches]
    result = {"dashboards": [], "alarms": [], "deployments": [], "errors": errors,
              "parameters": {k: v.get("Default")
                             for k, v in (template or {}).get("Parameters", {}).items()}}
    for name, res in (template or {}).get("Resources", {}).items():
        kind, props = res.get("Type"), res.get("Properties", {})
        try:
            if kind == "AWS::CloudWatch::Dashboard":
                result["dashboards"].append(dashboard(name, props, errors))
            elif kind == "AWS::CloudWatch::Alarm":
                result["alarms"].append(alarm(name, props))
            elif kind == "AWS::Serverless::Function" and "DeploymentPreference" in props:
                pref = props["DeploymentPreference"]
                result["deployments"].append({
                    "function": name,
                    "type": pref.get("Type"),
                    "alarms": [a.get("Ref") if isinstance(a, dict) else a
                               for a in pref.get("Alarms", [])],
                })
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            errors.append(f"{name}: {e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
