"""A local Ray, as every `cluster=local` sweep starts it (gepa_lab.servers.ray_cluster.ray_session), lives on a
loopback address Ray keeps as given: its node, the driver's connection and the address the sweep's servers bind.
(Ray rewrites 127.0.0.1 to the machine's interface address, so a head "on 127.0.0.1" is on the network.)"""
import ipaddress

import ray

from gepa_lab.servers.ray_cluster import LOCAL_NODE_IP, RayConfig, ray_session, reachable_host


def test_a_local_sweeps_ray_node_and_driver_connection_use_loopback(tmp_path):
    assert ipaddress.ip_address(LOCAL_NODE_IP).is_loopback
    with ray_session(RayConfig(num_cpus=1), tmp_path):
        assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {LOCAL_NODE_IP}
        assert ray.get_runtime_context().gcs_address.startswith(f"{LOCAL_NODE_IP}:")  # the driver's connection
        assert ray.util.get_node_ip_address() == LOCAL_NODE_IP  # the node the driver joined as
        assert ray.get(ray.remote(num_cpus=0)(ray.util.get_node_ip_address).remote()) == LOCAL_NODE_IP
        assert reachable_host() == LOCAL_NODE_IP  # where the sweep's router and Redis bind
    assert not ray.is_initialized()
    assert reachable_host() == "127.0.0.1"  # without Ray: this machine only
