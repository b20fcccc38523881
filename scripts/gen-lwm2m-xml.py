#!/usr/bin/env python3
"""Generate config/lwm2m_xml/*.xml: object definitions in the OMA DDF schema
for the core LwM2M objects 0-7 and the common IPSO Smart Objects (3300-3350).

The facts (object and resource ids, names, types, instance multiplicity,
operations, mandatory flags) are public registry facts; the files are
written by this script with our own one-line descriptions, so no upstream
prose is copied. Run after editing the tables:

    python3 scripts/gen-lwm2m-xml.py
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

OUT = Path(__file__).resolve().parents[1] / "config" / "lwm2m_xml"

# (id, name, operations, multiple, mandatory, type)
S, M = False, True

CORE = {
    0: ("LWM2M Security", M, True, [
        (0, "LWM2M Server URI", "", S, True, "String"),
        (1, "Bootstrap-Server", "", S, True, "Boolean"),
        (2, "Security Mode", "", S, True, "Integer"),
        (3, "Public Key or Identity", "", S, True, "Opaque"),
        (4, "Server Public Key", "", S, True, "Opaque"),
        (5, "Secret Key", "", S, True, "Opaque"),
        (6, "SMS Security Mode", "", S, False, "Integer"),
        (7, "SMS Binding Key Parameters", "", S, False, "Opaque"),
        (8, "SMS Binding Secret Key(s)", "", S, False, "Opaque"),
        (9, "LwM2M Server SMS Number", "", S, False, "String"),
        (10, "Short Server ID", "", S, False, "Integer"),
        (11, "Client Hold Off Time", "", S, False, "Integer"),
        (12, "Bootstrap-Server Account Timeout", "", S, False, "Integer"),
    ]),
    1: ("LwM2M Server", M, True, [
        (0, "Short Server ID", "R", S, True, "Integer"),
        (1, "Lifetime", "RW", S, True, "Integer"),
        (2, "Default Minimum Period", "RW", S, False, "Integer"),
        (3, "Default Maximum Period", "RW", S, False, "Integer"),
        (4, "Disable", "E", S, False, ""),
        (5, "Disable Timeout", "RW", S, False, "Integer"),
        (6, "Notification Storing When Disabled or Offline", "RW", S, True, "Boolean"),
        (7, "Binding", "RW", S, True, "String"),
        (8, "Registration Update Trigger", "E", S, True, ""),
    ]),
    2: ("LwM2M Access Control", M, False, [
        (0, "Object ID", "R", S, True, "Integer"),
        (1, "Object Instance ID", "R", S, True, "Integer"),
        (2, "ACL", "RW", M, False, "Integer"),
        (3, "Access Control Owner", "RW", S, True, "Integer"),
    ]),
    3: ("Device", S, True, [
        (0, "Manufacturer", "R", S, False, "String"),
        (1, "Model Number", "R", S, False, "String"),
        (2, "Serial Number", "R", S, False, "String"),
        (3, "Firmware Version", "R", S, False, "String"),
        (4, "Reboot", "E", S, True, ""),
        (5, "Factory Reset", "E", S, False, ""),
        (6, "Available Power Sources", "R", M, False, "Integer"),
        (7, "Power Source Voltage", "R", M, False, "Integer"),
        (8, "Power Source Current", "R", M, False, "Integer"),
        (9, "Battery Level", "R", S, False, "Integer"),
        (10, "Memory Free", "R", S, False, "Integer"),
        (11, "Error Code", "R", M, True, "Integer"),
        (12, "Reset Error Code", "E", S, False, ""),
        (13, "Current Time", "RW", S, False, "Time"),
        (14, "UTC Offset", "RW", S, False, "String"),
        (15, "Timezone", "RW", S, False, "String"),
        (16, "Supported Binding and Modes", "R", S, True, "String"),
        (17, "Device Type", "R", S, False, "String"),
        (18, "Hardware Version", "R", S, False, "String"),
        (19, "Software Version", "R", S, False, "String"),
        (20, "Battery Status", "R", S, False, "Integer"),
        (21, "Memory Total", "R", S, False, "Integer"),
        (22, "ExtDevInfo", "R", M, False, "Objlnk"),
    ]),
    4: ("Connectivity Monitoring", S, False, [
        (0, "Network Bearer", "R", S, True, "Integer"),
        (1, "Available Network Bearer", "R", M, True, "Integer"),
        (2, "Radio Signal Strength", "R", S, True, "Integer"),
        (3, "Link Quality", "R", S, False, "Integer"),
        (4, "IP Addresses", "R", M, True, "String"),
        (5, "Router IP Addresses", "R", M, False, "String"),
        (6, "Link Utilization", "R", S, False, "Integer"),
        (7, "APN", "R", M, False, "String"),
        (8, "Cell ID", "R", S, False, "Integer"),
        (9, "SMNC", "R", S, False, "Integer"),
        (10, "SMCC", "R", S, False, "Integer"),
    ]),
    5: ("Firmware Update", S, False, [
        (0, "Package", "W", S, True, "Opaque"),
        (1, "Package URI", "RW", S, True, "String"),
        (2, "Update", "E", S, True, ""),
        (3, "State", "R", S, True, "Integer"),
        (4, "Update Supported Objects", "RW", S, False, "Boolean"),
        (5, "Update Result", "R", S, True, "Integer"),
        (6, "PkgName", "R", S, False, "String"),
        (7, "PkgVersion", "R", S, False, "String"),
        (8, "Firmware Update Protocol Support", "R", M, False, "Integer"),
        (9, "Firmware Update Delivery Method", "R", S, True, "Integer"),
    ]),
    6: ("Location", S, False, [
        (0, "Latitude", "R", S, True, "Float"),
        (1, "Longitude", "R", S, True, "Float"),
        (2, "Altitude", "R", S, False, "Float"),
        (3, "Radius", "R", S, False, "Float"),
        (4, "Velocity", "R", S, False, "Opaque"),
        (5, "Timestamp", "R", S, True, "Time"),
        (6, "Speed", "R", S, False, "Float"),
    ]),
    7: ("Connectivity Statistics", S, False, [
        (0, "SMS Tx Counter", "R", S, False, "Integer"),
        (1, "SMS Rx Counter", "R", S, False, "Integer"),
        (2, "Tx Data", "R", S, False, "Integer"),
        (3, "Rx Data", "R", S, False, "Integer"),
        (4, "Max Message Size", "R", S, False, "Integer"),
        (5, "Average Message Size", "R", S, False, "Integer"),
        (6, "Start", "E", S, True, ""),
        (7, "Stop", "E", S, True, ""),
        (8, "Collection Period", "RW", S, False, "Integer"),
    ]),
}

# IPSO reusable resources: id -> (name, operations, type)
R = {
    5500: ("Digital Input State", "R", "Boolean"),
    5501: ("Digital Input Counter", "R", "Integer"),
    5505: ("Digital Input Counter Reset", "E", ""),
    5514: ("Latitude", "R", "String"),
    5515: ("Longitude", "R", "String"),
    5516: ("Uncertainty", "R", "String"),
    5517: ("Velocity", "R", "Opaque"),
    5518: ("Timestamp", "R", "Time"),
    5521: ("Duration", "RW", "Float"),
    5523: ("Trigger", "E", ""),
    5524: ("Duration", "RW", "Float"),
    5525: ("Minimum Off-time", "RW", "Float"),
    5526: ("Mode", "RW", "Integer"),
    5527: ("Text", "RW", "String"),
    5528: ("X Coordinate", "RW", "Integer"),
    5529: ("Y Coordinate", "RW", "Integer"),
    5530: ("Clear Display", "E", ""),
    5531: ("Contrast", "RW", "Float"),
    5532: ("Increase Input State", "R", "Boolean"),
    5533: ("Decrease Input State", "R", "Boolean"),
    5534: ("Counter", "RW", "Integer"),
    5536: ("Current Position", "RW", "Float"),
    5537: ("Transition Time", "RW", "Float"),
    5538: ("Remaining Time", "R", "Float"),
    5541: ("Up Counter", "RW", "Integer"),
    5542: ("Down Counter", "RW", "Integer"),
    5543: ("Digital State", "R", "Boolean"),
    5544: ("Cumulative Time", "RW", "Float"),
    5545: ("Max X Coordinate", "R", "Integer"),
    5546: ("Max Y Coordinate", "R", "Integer"),
    5547: ("Multi-state Input", "R", "Integer"),
    5548: ("Level", "RW", "Float"),
    5600: ("Analog Input Current Value", "R", "Float"),
    5601: ("Min Measured Value", "R", "Float"),
    5602: ("Max Measured Value", "R", "Float"),
    5603: ("Min Range Value", "R", "Float"),
    5604: ("Max Range Value", "R", "Float"),
    5605: ("Reset Min and Max Measured Values", "E", ""),
    5700: ("Sensor Value", "R", "Float"),
    5701: ("Sensor Units", "R", "String"),
    5702: ("X Value", "R", "Float"),
    5703: ("Y Value", "R", "Float"),
    5704: ("Z Value", "R", "Float"),
    5705: ("Compass Direction", "R", "Float"),
    5706: ("Colour", "RW", "String"),
    5750: ("Application Type", "RW", "String"),
    5751: ("Sensor Type", "R", "String"),
    5800: ("Instantaneous active power", "R", "Float"),
    5801: ("Min Measured active power", "R", "Float"),
    5802: ("Max Measured active power", "R", "Float"),
    5805: ("Cumulative active power", "R", "Float"),
    5820: ("Power Factor", "R", "Float"),
    5821: ("Current Calibration", "RW", "Float"),
    5822: ("Reset Cumulative energy", "E", ""),
    5823: ("Event Identifier", "RW", "String"),
    5824: ("Start Time", "RW", "Time"),
    5825: ("Duration In Min", "RW", "Integer"),
    5826: ("Criticality Level", "RW", "Integer"),
    5827: ("Avg Load AdjPct", "RW", "String"),
    5828: ("Duty Cycle", "RW", "Integer"),
    5850: ("On/Off", "RW", "Boolean"),
    5851: ("Dimmer", "RW", "Integer"),
    5852: ("On Time", "RW", "Integer"),
    5853: ("Multi-state Output", "RW", "String"),
    5854: ("Off Time", "RW", "Integer"),
    5900: ("Set Point Value", "RW", "Float"),
    5906: ("Clip", "RW", "Opaque"),
    5910: ("Bitmap Input", "R", "Integer"),
    5911: ("Bitmap Input Reset", "E", ""),
    5912: ("Element Description", "RW", "String"),
}

SENSOR = [5700, 5701, 5601, 5602, 5603, 5604, 5605, 5750, 5518]
XYZ = [5702, 5703, 5704, 5701, 5603, 5604, 5750, 5518]
# (id, name, resources, mandatory resource ids)
IPSO = [
    (3300, "Generic Sensor", SENSOR + [5751], {5700}),
    (3301, "Illuminance", SENSOR, {5700}),
    (3302, "Presence", [5500, 5501, 5505, 5751, 5750], {5500}),
    (3303, "Temperature", SENSOR, {5700}),
    (3304, "Humidity", SENSOR, {5700}),
    (3305, "Power Measurement", [5800, 5801, 5802, 5805, 5820, 5821, 5822, 5750], {5800}),
    (3306, "Actuation", [5850, 5851, 5852, 5853, 5750], {5850}),
    (3308, "Set Point", [5900, 5701, 5706, 5750], {5900}),
    (3310, "Load Control", [5823, 5824, 5825, 5826, 5827, 5828], {5823, 5824, 5825}),
    (3311, "Light Control", [5850, 5851, 5852, 5805, 5820, 5706, 5701, 5750], {5850}),
    (3312, "Power Control", [5850, 5851, 5852, 5805, 5820, 5750], {5850}),
    (3313, "Accelerometer", XYZ, {5702}),
    (3314, "Magnetometer", XYZ + [5705], {5702}),
    (3315, "Barometer", SENSOR, {5700}),
    (3316, "Voltage", SENSOR + [5821], {5700}),
    (3317, "Current", SENSOR + [5821], {5700}),
    (3318, "Frequency", SENSOR, {5700}),
    (3319, "Depth", SENSOR, {5700}),
    (3320, "Percentage", SENSOR, {5700}),
    (3321, "Altitude", SENSOR, {5700}),
    (3322, "Load", SENSOR, {5700}),
    (3323, "Pressure", SENSOR, {5700}),
    (3324, "Loudness", SENSOR, {5700}),
    (3325, "Concentration", SENSOR, {5700}),
    (3326, "Acidity", SENSOR, {5700}),
    (3327, "Conductivity", SENSOR, {5700}),
    (3328, "Power", SENSOR, {5700}),
    (3329, "Power Factor", SENSOR, {5700}),
    (3330, "Distance", SENSOR, {5700}),
    (3331, "Energy", [5805, 5701, 5822, 5750, 5518], {5805}),
    (3332, "Direction", [5705, 5601, 5602, 5605, 5750, 5518], {5705}),
    (3333, "Time", [5518, 5750], {5518}),
    (3334, "Gyrometer", XYZ, {5702}),
    (3335, "Colour", [5706, 5701, 5750], {5706}),
    (3336, "Location", [5514, 5515, 5516, 5705, 5517, 5518, 5750], {5514, 5515}),
    (3337, "Positioner", [5536, 5537, 5538, 5601, 5602, 5605, 5603, 5604, 5750], {5536}),
    (3338, "Buzzer", [5850, 5548, 5521, 5525, 5750], {5850}),
    (3339, "Audio Clip", [5906, 5850, 5548, 5524, 5750], {5906}),
    (3340, "Timer", [5521, 5538, 5525, 5523, 5850, 5501, 5544, 5543, 5534, 5526, 5750], {5521}),
    (3341, "Addressable Text Display", [5527, 5528, 5529, 5545, 5546, 5530, 5548, 5531, 5750], {5527}),
    (3342, "On/Off switch", [5500, 5501, 5852, 5854, 5750], {5500}),
    (3343, "Dimmer", [5548, 5852, 5854, 5750], {5548}),
    (3344, "Up/Down Control", [5532, 5533, 5541, 5542, 5750], {5532, 5533}),
    (3345, "Multiple Axis Joystick", [5500, 5501, 5702, 5703, 5704, 5750], set()),
    (3346, "Rate", SENSOR, {5700}),
    (3347, "Push button", [5500, 5501, 5750], {5500}),
    (3348, "Multi-state Selector", [5547, 5750], {5547}),
    (3349, "Bitmap", [5910, 5911, 5912, 5750], {5910}),
    (3350, "Stopwatch", [5544, 5850, 5501, 5750], {5544}),
]


def item(rid: int, name: str, ops: str, multiple: bool, mandatory: bool, rtype: str) -> str:
    return (
        f'      <Item ID="{rid}">\n'
        f"        <Name>{escape(name)}</Name>\n"
        f"        <Operations>{ops}</Operations>\n"
        f"        <MultipleInstances>{'Multiple' if multiple else 'Single'}</MultipleInstances>\n"
        f"        <Mandatory>{'Mandatory' if mandatory else 'Optional'}</Mandatory>\n"
        f"        <Type>{rtype}</Type>\n"
        f"        <RangeEnumeration></RangeEnumeration>\n"
        f"        <Units></Units>\n"
        f"        <Description>{escape(name)} (resource {rid}).</Description>\n"
        f"      </Item>\n"
    )


def document(oid: int, name: str, multiple: bool, mandatory: bool, items: list[str]) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        "<!-- Generated by scripts/gen-lwm2m-xml.py for Tributary's LwM2M gateway. -->\n"
        "<LWM2M>\n"
        '  <Object ObjectType="MODefinition">\n'
        f"    <Name>{escape(name)}</Name>\n"
        f"    <Description1>{escape(name)} (object {oid}).</Description1>\n"
        f"    <ObjectID>{oid}</ObjectID>\n"
        f"    <ObjectURN>urn:oma:lwm2m:{'oma' if oid < 1000 else 'ext'}:{oid}</ObjectURN>\n"
        f"    <MultipleInstances>{'Multiple' if multiple else 'Single'}</MultipleInstances>\n"
        f"    <Mandatory>{'Mandatory' if mandatory else 'Optional'}</Mandatory>\n"
        "    <Resources>\n"
        + "".join(items)
        + "    </Resources>\n"
        "  </Object>\n"
        "</LWM2M>\n"
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.xml"):
        old.unlink()
    for oid, (name, multiple, mandatory, res) in CORE.items():
        items = [item(*r) for r in res]
        (OUT / f"{oid}.xml").write_text(document(oid, name, multiple, mandatory, items))
    for oid, name, rids, mand in IPSO:
        seen = []
        for rid in rids:
            if rid not in seen:
                seen.append(rid)
        items = []
        for rid in seen:
            rname, ops, rtype = R[rid]
            items.append(item(rid, rname, ops, False, rid in mand, rtype))
        (OUT / f"{oid}.xml").write_text(document(oid, name, True, False, items))
    print(f"{len(CORE) + len(IPSO)} object definitions in {OUT}")


if __name__ == "__main__":
    main()
