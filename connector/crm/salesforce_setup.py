"""`leadscore setup` on Salesforce: the score fields, and Edit access to them for the integration user.

1. Each score field missing from Lead and Contact is created through the Tooling API
   (`POST tooling/sobjects/CustomField` with `FullName` "Lead.Lead_Score__c" and `Metadata`:
   type, label, precision/scale or length), which needs the "Customize Application" permission.
2. A field created through an API is visible to no profile until field-level security grants it, so a
   permission set (`PERMISSION_SET_NAME`) gets FieldPermissions (read and edit) on every score field and
   is assigned to the integration user (the token's user, from `/services/oauth2/userinfo`). Creating
   and assigning it needs "Manage Profiles and Permission Sets" and "Assign Permission Sets".

Idempotent: what exists is found first (describe, SOQL on PermissionSet, FieldPermissions and
PermissionSetAssignment) and only what is missing is created; a field the integration user cannot
see yet is recognised by the Tooling API's duplicate answer. Each step says what it created and what
was in place; a refused permission is one sentence naming it, followed by the manual steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from connector.crm.salesforce_records import build_soql, soql_id, soql_string
from connector.errors import LeadscoreError
from connector.mappings.salesforce import OBJECTS

if TYPE_CHECKING:
    from simple_salesforce.api import Salesforce

    from connector.crm.salesforce import SalesforceAdapter

PERMISSION_SET_NAME = "Leadscore_Integration"
PERMISSION_SET_LABEL = "Leadscore integration"
_DUPLICATE = ("DUPLICATE_DEVELOPER_NAME", "DUPLICATE_VALUE", "already in use", "duplicate value")
_REFUSED = ("INSUFFICIENT_ACCESS", "(403)", " 403", "refused")


def tooling_metadata(spec: str) -> dict[str, Any]:
    """A field type as the connector names it ("Number(18,0)", "Text(20)", "Long Text Area(32768)",
    "Date/Time") as Tooling API CustomField Metadata (type, precision/scale or length)."""
    name, _, args = spec.partition("(")
    nums = [int(x) for x in re.findall(r"\d+", args)]
    kind = name.replace(" ", "").replace("/", "")
    if kind == "Number":
        return {"type": "Number", "precision": nums[0] if nums else 18, "scale": nums[1] if len(nums) > 1 else 0}
    if kind == "LongTextArea":
        return {"type": "LongTextArea", "length": nums[0] if nums else 32768, "visibleLines": 5}
    if kind == "Text":
        return {"type": "Text", "length": nums[0] if nums else 255}
    return {"type": kind}


def _is(exc: Exception, words: tuple[str, ...]) -> bool:
    text = str(exc)
    return any(w.lower() in text.lower() for w in words)


class SalesforceSetup:
    def __init__(self, adapter: SalesforceAdapter, field_specs: Mapping[str, tuple[Any, str, str]]) -> None:
        self.adapter = adapter
        self.specs = field_specs
        self.lines: list[str] = []

    def _call(self, fn: Callable[[Salesforce], Any]) -> Any:
        return self.adapter._run(fn)  # the adapter's one retry/refresh path

    def _query(self, soql: str) -> list[dict[str, Any]]:
        result = self._call(lambda sf: sf.query(soql))
        return list(result.get("records") or [])

    def _create(self, path: str, body: Mapping[str, Any]) -> Any:
        return self._call(lambda sf: sf.restful(path, method="POST", json=dict(body)))

    # ---- steps

    def fields(self) -> dict[str, list[str]]:
        """Create the missing score fields; return per object the fields that exist now."""
        present: dict[str, list[str]] = {}
        for obj in OBJECTS:
            described = self.adapter._describe(obj)
            present[obj] = []
            for engine, api in self.adapter.mapping.write_fields.as_dict().items():
                if api.lower() in described:
                    present[obj].append(api)
                    continue
                _types, spec, label = self.specs[engine]
                body = {"FullName": f"{obj}.{api}", "Metadata": {"label": label, **tooling_metadata(spec)}}
                try:
                    self._create("tooling/sobjects/CustomField", body)
                except LeadscoreError as exc:
                    if _is(exc, _DUPLICATE):
                        self.lines.append(f"{obj}: the field {api} exists but the integration user cannot see it "
                                          "yet; the permission set below gives it access")
                        present[obj].append(api)
                        continue
                    if _is(exc, _REFUSED):
                        self.lines.append(
                            f'{obj}: the integration user may not create fields: it needs the "Customize '
                            'Application" permission; or create these fields by hand in Setup > Object Manager > '
                            f"{obj} > Fields & Relationships"
                        )
                        break
                    raise
                self.lines.append(f"{obj}: created the field {api} ({spec})")
                present[obj].append(api)
        return present

    def access(self, present: Mapping[str, list[str]]) -> None:
        """A permission set with Edit access to the fields, assigned to the integration user."""
        wanted = [(obj, api) for obj, apis in present.items() for api in apis]
        if not wanted:
            return
        try:
            user_id = str(self._call(lambda sf: sf.session.get(
                f"{self.adapter.instance_url}/services/oauth2/userinfo", headers=sf.headers,
                timeout=30).json())["user_id"])
            found = self._query(build_soql(["Id"], "PermissionSet", [f"Name = {soql_string(PERMISSION_SET_NAME)}"]))
            if found:
                ps_id = str(found[0]["Id"])
                made_ps = False
            else:
                ps_id = str(self._create("sobjects/PermissionSet", {
                    "Name": PERMISSION_SET_NAME, "Label": PERMISSION_SET_LABEL,
                    "Description": "Edit access to the lead score fields for the leadscore connector's user"})["id"])
                made_ps = True
            granted = {
                str(r["Field"]).lower(): r
                for r in self._query(build_soql(["Id", "Field", "PermissionsRead", "PermissionsEdit"],
                                                "FieldPermissions", [f"ParentId = {soql_id(ps_id)}"]))
            }
            added = 0
            for obj, api in wanted:
                if f"{obj}.{api}".lower() in granted:
                    continue
                self._create("sobjects/FieldPermissions", {
                    "ParentId": ps_id, "SobjectType": obj, "Field": f"{obj}.{api}",
                    "PermissionsRead": True, "PermissionsEdit": True})
                added += 1
            assigned = self._query(build_soql(["Id"], "PermissionSetAssignment", [
                f"PermissionSetId = {soql_id(ps_id)}", f"AssigneeId = {soql_id(user_id)}"]))
            if not assigned:
                self._create("sobjects/PermissionSetAssignment", {"AssigneeId": user_id, "PermissionSetId": ps_id})
        except LeadscoreError as exc:
            if not _is(exc, _REFUSED):
                raise
            self.lines.append(
                "the integration user may not create or assign permission sets: it needs the \"Manage Profiles "
                "and Permission Sets\" and \"Assign Permission Sets\" permissions; or in Setup > Permission Sets "
                f"create {PERMISSION_SET_NAME}, give it Read and Edit on the score fields of Lead and Contact "
                "(Object Settings), and assign it to the integration user (Manage Assignments)"
            )
            return
        done = []
        if made_ps:
            done.append(f"created the permission set {PERMISSION_SET_NAME}")
        if added:
            done.append(f"gave it Edit access to {added} field(s)")
        if not assigned:
            done.append("assigned it to the integration user")
        if done:
            self.lines.append("; ".join(done))
        else:
            self.lines.append(f"the permission set {PERMISSION_SET_NAME} is in place: Edit access to "
                              f"{len(wanted)} fields, assigned to the integration user")

    def run(self) -> list[str]:
        present = self.fields()
        self.access(present)
        for obj in OBJECTS:
            created = {line.split(" created the field ")[1].split(" (")[0].lower()
                       for line in self.lines if line.startswith(f"{obj}: created the field ")}
            self.lines += [
                line for line in self.adapter._field_lines(
                    obj, self.adapter._describe(obj), all_lines=True)
                if not any(f" {api} (" in line.lower() for api in created)
            ]
        return self.lines
