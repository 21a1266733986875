"""Writes an offline NVD JSON 1.1 mirror for vulnix into DIR (argument 1).

The same crafted-feed idea as tests/common/mod.rs (NvdMirror): vulnix downloads
nvdcve-1.1-{year}.json.gz for the current year and the five before it, plus
nvdcve-1.1-modified.json.gz. One critical advisory (CVSSv3 9.8) matches the derivation
name vulnfixture-1.0.1 of the `vulnerable` fixture in vm-tests/lib.nix.
"""

import datetime
import gzip
import json
import os
import sys

ADVISORY = {
    "cve": {
        "data_type": "CVE",
        "data_format": "MITRE",
        "data_version": "4.0",
        "CVE_data_meta": {"ID": "CVE-2099-0001", "ASSIGNER": "fixture@pullnix.invalid"},
        "problemtype": {"problemtype_data": [{"description": []}]},
        "references": {"reference_data": []},
        "description": {
            "description_data": [
                {"lang": "en", "value": "pullnix VM test: crafted advisory for vulnfixture 1.0.1"}
            ]
        },
    },
    "configurations": {
        "CVE_data_version": "4.0",
        "nodes": [
            {
                "operator": "OR",
                "children": [],
                "cpe_match": [
                    {
                        "vulnerable": True,
                        "cpe23Uri": "cpe:2.3:a:fixture:vulnfixture:1.0.1:*:*:*:*:*:*:*",
                        "cpe_name": [],
                    }
                ],
            }
        ],
    },
    "impact": {
        "baseMetricV3": {
            "cvssV3": {"version": "3.1", "baseScore": 9.8, "baseSeverity": "CRITICAL"},
            "exploitabilityScore": 3.9,
            "impactScore": 5.9,
        }
    },
    "publishedDate": "2026-01-01T00:00Z",
    "lastModifiedDate": "2026-01-01T00:00Z",
}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    year = datetime.date.today().year
    # One year of margin on both sides, as the Rust fixture does.
    names = [str(y) for y in range(year - 6, year + 2)] + ["modified"]
    for name in names:
        items = [ADVISORY] if name in (str(year), "modified") else []
        feed = {
            "CVE_data_type": "CVE",
            "CVE_data_format": "MITRE",
            "CVE_data_version": "4.0",
            "CVE_data_numberOfCVEs": str(len(items)),
            "CVE_data_timestamp": "2026-01-01T00:00Z",
            "CVE_Items": items,
        }
        with gzip.open(os.path.join(out, f"nvdcve-1.1-{name}.json.gz"), "wt") as f:
            json.dump(feed, f)


main()
