"""Test beds shared by the interop tests, the benchmarks and the demo: throwaway PKI, network
namespaces with veth pairs, and strongSwan charon instances driven over vici. Nothing in the
daemon imports this package."""
