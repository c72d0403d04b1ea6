"""The sandbox org's setup objects: fields created through the Tooling API, permission sets, their field
permissions and their assignments, so that `leadscore setup` does on the sandbox what it does on an org.

What Salesforce does, and the sandbox with it:
- `POST /services/data/vXX.X/tooling/sobjects/CustomField` `{"FullName": "Lead.Lead_Score__c", "Metadata": {...}}`
  creates a field (Tooling API guide, CustomField). The creating user needs "Customize Application".
- A field created through the API is visible to no profile until field-level security grants it: here it is
  absent from describe and SOQL until a FieldPermissions row (`ParentId` a permission set, `SobjectType`,
  `Field` "Lead.Lead_Score__c", `PermissionsRead`, `PermissionsEdit`) of a permission set assigned to the
  integration user (PermissionSetAssignment `AssigneeId`, `PermissionSetId`) grants it; edit access makes it
  updateable. PermissionSet, FieldPermissions and PermissionSetAssignment are ordinary REST sobjects
  (`POST /services/data/vXX.X/sobjects/PermissionSet`, queried with SOQL).
- Creating permission sets needs "Manage Profiles and Permission Sets", assigning them "Assign Permission Sets".

Not confirmed from the vendor's documents, kept as named constants: the status and error code a user
without the permission gets, and the codes for a duplicate field, permission set name or assignment.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import replace
from typing import Any

from sandbox import sf_ids
from sandbox.soql import Field, FieldType, SObjectType

T = FieldType
Record = dict[str, Any]

PERMISSION_SET = "0PS"
FIELD_PERMISSIONS = "01k"
ASSIGNMENT = "0Pa"
CUSTOM_FIELD = "00N"
PREFIXES: Mapping[str, str] = {
    "PermissionSet": PERMISSION_SET,
    "FieldPermissions": FIELD_PERMISSIONS,
    "PermissionSetAssignment": ASSIGNMENT,
}
OBJECT_OF_PREFIX: Mapping[str, str] = {v: k for k, v in PREFIXES.items()}

NO_PERMISSION = (403, "INSUFFICIENT_ACCESS", "insufficient access rights on object id")  # (unverified)
DUPLICATE_FIELD = (400, "DUPLICATE_DEVELOPER_NAME", "This field name is already in use")  # (unverified)
DUPLICATE_VALUE = (400, "DUPLICATE_VALUE", "duplicate value found")  # (unverified wording)


class SetupError(Exception):
    """An answer in Salesforce's error shape; `args` are (status, errorCode, message)."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields


def _f(name: str, ftype: FieldType, label: str = "", **kw: Any) -> Field:
    return Field(name=name, type=ftype, label=label or name, **kw)


def catalog() -> dict[str, SObjectType]:
    """The three setup sobjects, as describe and SOQL see them."""
    system = [
        _f("Id", T.ID, "Record ID", nillable=False, length=18),
        _f("IsDeleted", T.BOOLEAN, "Deleted", nillable=False),
        _f("CreatedDate", T.DATETIME, "Created Date", nillable=False),
        _f("SystemModstamp", T.DATETIME, "System Modstamp", nillable=False),
    ]
    specs: dict[str, tuple[str, list[Field]]] = {
        "PermissionSet": ("Permission Set", [
            _f("Name", T.STRING, "Name", updateable=True, nillable=False, length=80),
            _f("Label", T.STRING, "Label", updateable=True, nillable=False, length=80),
            _f("Description", T.TEXTAREA, "Description", updateable=True, length=255),
        ]),
        "FieldPermissions": ("Field Permissions", [
            _f("ParentId", T.REFERENCE, "Parent ID", nillable=False, length=18, reference_to=("PermissionSet",),
               relationship_name="Parent"),
            _f("SobjectType", T.PICKLIST, "Sobject Type Name", nillable=False, length=40),
            _f("Field", T.PICKLIST, "Field Name", nillable=False, length=255),
            _f("PermissionsRead", T.BOOLEAN, "Read Access", updateable=True, nillable=False),
            _f("PermissionsEdit", T.BOOLEAN, "Edit Access", updateable=True, nillable=False),
        ]),
        "PermissionSetAssignment": ("Permission Set Assignment", [
            _f("AssigneeId", T.REFERENCE, "Assignee ID", nillable=False, length=18, reference_to=("User",),
               relationship_name="Assignee"),
            _f("PermissionSetId", T.REFERENCE, "Permission Set ID", nillable=False, length=18,
               reference_to=("PermissionSet",), relationship_name="PermissionSet"),
        ]),
    }  # fmt: skip
    out: dict[str, SObjectType] = {}
    for name, (label, fields) in specs.items():
        o = SObjectType(name, PREFIXES[name], label)
        for f in (*system, *fields):
            o.add(f)
        out[name] = o
    return out


class SetupObjects:
    """Permission sets, field permissions, assignments and the fields created through the Tooling API."""

    def __init__(self, integration_user_id: str) -> None:
        self.integration_user = integration_user_id
        self.customize_application = True  # may create fields
        self.manage_permission_sets = True  # may create and assign permission sets
        self.records: dict[str, dict[int, Record]] = {name: {} for name in PREFIXES}
        self.created_fields: dict[tuple[str, str], Field] = {}  # (object, field name lower) -> as created
        self._seq = itertools.count(1)
        self.lock = threading.RLock()

    # ---- records
    def keys(self, obj: str) -> list[int]:
        return sorted(self.records[obj])

    def record(self, obj: str, key: int) -> Record | None:
        rec = self.records[obj].get(key)
        return None if rec is None else dict(rec)

    def create(self, obj: str, values: Mapping[str, Any]) -> str:
        if not self.manage_permission_sets:
            raise SetupError(*NO_PERMISSION)
        unknown = [k for k in values if k != "attributes" and k not in _WRITABLE[obj]]
        if unknown:
            raise SetupError(400, "INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type {obj}",
                             [unknown[0]])
        missing = [k for k in _REQUIRED[obj] if not values.get(k)]
        if missing:
            raise SetupError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                             missing)
        with self.lock:
            for rec in self.records[obj].values():
                if all(str(rec.get(k, "")).lower() == str(values.get(k, "")).lower() for k in _UNIQUE[obj]):
                    status, code, message = DUPLICATE_VALUE
                    raise SetupError(status, code, f"{message}: {', '.join(_UNIQUE[obj])} duplicates value on "
                                                   f"record with id: {rec['Id']}", list(_UNIQUE[obj]))
            key = next(self._seq)
            now = time.time()
            rec = {"Id": sf_ids.make_id(PREFIXES[obj], key), "IsDeleted": False, "CreatedDate": now,
                   "SystemModstamp": now, **_DEFAULTS[obj]}
            rec.update({k: v for k, v in values.items() if k != "attributes"})
            self.records[obj][key] = rec
        return str(rec["Id"])

    # ---- fields and field-level security
    def has_field(self, o: SObjectType, name: str) -> bool:
        return o.get(name) is not None or (o.name, name.lower()) in self.created_fields

    def add_field(self, o: SObjectType, f: Field) -> str:
        if not self.customize_application:
            raise SetupError(*NO_PERMISSION)
        if self.has_field(o, f.name):
            status, code, message = DUPLICATE_FIELD
            raise SetupError(status, code, f"{message}: {f.name}")
        with self.lock:
            self.created_fields[(o.name, f.name.lower())] = f
            n = len(self.created_fields)
        return sf_ids.make_id(CUSTOM_FIELD, n)

    def publish(self, objects: MutableMapping[str, SObjectType]) -> None:
        """Show each API-created field to the integration user as its field permissions allow."""
        with self.lock:
            assigned = {str(r["PermissionSetId"]) for r in self.records["PermissionSetAssignment"].values()
                        if r.get("AssigneeId") == self.integration_user}
            grants: dict[str, tuple[bool, bool]] = {}
            for r in self.records["FieldPermissions"].values():
                if str(r.get("ParentId")) in assigned:
                    name = str(r.get("Field", "")).lower()
                    read, edit = grants.get(name, (False, False))
                    grants[name] = (read or bool(r.get("PermissionsRead")), edit or bool(r.get("PermissionsEdit")))
            for (obj, lname), f in self.created_fields.items():
                read, edit = grants.get(f"{obj.lower()}.{lname}", (False, False))
                o = objects[obj]
                if read or edit:
                    o.add(replace(f, updateable=edit))
                else:
                    o.fields.pop(lname, None)


_WRITABLE: Mapping[str, frozenset[str]] = {
    "PermissionSet": frozenset({"Name", "Label", "Description"}),
    "FieldPermissions": frozenset({"ParentId", "SobjectType", "Field", "PermissionsRead", "PermissionsEdit"}),
    "PermissionSetAssignment": frozenset({"AssigneeId", "PermissionSetId"}),
}
_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "PermissionSet": ("Name", "Label"),
    "FieldPermissions": ("ParentId", "SobjectType", "Field"),
    "PermissionSetAssignment": ("AssigneeId", "PermissionSetId"),
}
_UNIQUE: Mapping[str, tuple[str, ...]] = {
    "PermissionSet": ("Name",),
    "FieldPermissions": ("ParentId", "Field"),
    "PermissionSetAssignment": ("AssigneeId", "PermissionSetId"),
}
_DEFAULTS: Mapping[str, Record] = {
    "PermissionSet": {"Description": None},
    "FieldPermissions": {"PermissionsRead": False, "PermissionsEdit": False},
    "PermissionSetAssignment": {},
}
