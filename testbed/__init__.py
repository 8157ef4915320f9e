"""Test beds shared by the tests, the benchmarks and the demo (`inv demo`, testbed/demo.py): a
throwaway PKI, network namespaces with veth pairs, a NAT router, pingers, strongSwan charon
instances driven over vici, scapy as an ESP oracle.

It lives outside the runtime package `host` (what a router runs, and what the wheel carries):
nothing in host/ imports it (tests/test_structure.py holds that)."""
