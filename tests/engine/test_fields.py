"""The field table (engine/fields.py) is the one declaration of a synced field: a field added
to it is selected from both services, mapped both ways, kept by a full sync's compact records
and part of the content hash (so Full sync sees a change to it)."""

from __future__ import annotations

import json
import subprocess
import sys

# Run in a fresh interpreter: the table is read once, when the modules load.
_ADD_DEPARTMENT = """
import json
import contactsync.engine.fields as f
f.FIELDS = (*f.FIELDS, f.Field("department", ("department",), "department", (30,)))
from contactsync.engine import mapping as m
from contactsync.engine.compact import BcRecord, Compactor, GraphRecord

bc = {"@odata.etag": 'W/"1"', **{k: "" for k in m.BC_SELECT}, "id": "b1", "type": "Person",
      "displayName": "Jo Doe", "email": "jo@example.com", "privacyBlocked": False,
      "department": "Sales"}
canonical = m.canonical_from_bc(bc)
body = m.graph_fields_from_canonical(canonical, "b1")
graph = {"id": "g1", "changeKey": "k1", **body}
record_bc, record_graph = Compactor().bc(bc), Compactor().graph(graph)
print(json.dumps({
    "bc_select": "department" in m.BC_SELECT,
    "graph_select": "department" in m.GRAPH_SELECT,
    "to_graph": body.get("department"),
    "from_graph": m.canonical_from_graph(graph).get("department"),
    "to_bc": m.bc_fields_from_canonical(
        {**canonical, "department": "Buying"}, current=bc)[0],
    "compact_bc": isinstance(record_bc, BcRecord) and record_bc.get("department"),
    "compact_graph": isinstance(record_graph, GraphRecord) and record_graph.get("department"),
    "hash_differs": m.content_hash(canonical)
        != m.content_hash({**canonical, "department": "Buying"}),
}))
"""


def test_a_field_added_to_the_table_reaches_select_mapping_records_and_hash() -> None:
    out = subprocess.run([sys.executable, "-c", _ADD_DEPARTMENT], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == {
        "bc_select": True, "graph_select": True,
        "to_graph": "Sales", "from_graph": "Sales", "to_bc": {"department": "Buying"},
        "compact_bc": "Sales", "compact_graph": "Sales", "hash_differs": True,
    }

