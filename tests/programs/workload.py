# A Python workload heavy in small allocations: dicts, lists, strings, JSON, regexes, sorting.
import json
import re
import collections

records = [{"id": i, "name": "item%05d" % i, "tags": ["t%d" % (i % 7), "u%d" % (i % 13)],
            "value": (i * 7919) % 10007} for i in range(60000)]
text = json.dumps(records)
back = json.loads(text)
assert back == records
counts = collections.Counter(tag for r in back for tag in r["tags"])
print(sorted(counts.items()))
words = re.findall(r"item(\d+)", text)
print(len(words), sum(int(w) for w in words[:1000]))
by_value = sorted(back, key=lambda r: (r["value"], r["id"]))
print([r["id"] for r in by_value[:20]])
grow = ""
for i in range(20000):
    grow += str(i)
print(len(grow), hash(grow[:100]) == hash(grow[:100]))
nested = {}
for i in range(50000):
    nested.setdefault(i % 97, []).append(str(i) * (i % 5))
print(sum(len(v) for v in nested.values()), len(nested))
