# Sourced by the slow-link benchmarks: two "hosts" as network namespaces joined by a veth pair,
# deleted on exit. Sets $a $b (namespaces), $va $vb (their ends), $ip_a $ip_b; then
#   limit_link RATE     # tc tbf on both ends (netem does not work in these namespaces)
#   link_bytes          # bytes both ends have sent so far
# Needs root (ip netns, tc).
id=$$
a=ds2h${id}a b=ds2h${id}b va=d2h${id}a vb=d2h${id}b
ip_a=10.233.$((id % 250)).1 ip_b=10.233.$((id % 250)).2
two_hosts_cleanup() { ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true; }
trap two_hosts_cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip link add "$va" netns "$a" type veth peer name "$vb" netns "$b"
ip -n "$a" addr add "$ip_a/24" dev "$va"; ip -n "$b" addr add "$ip_b/24" dev "$vb"
ip -n "$a" link set "$va" up; ip -n "$b" link set "$vb" up
ip -n "$a" link set lo up; ip -n "$b" link set lo up
limit_link() {
  ip netns exec "$a" tc qdisc replace dev "$va" root tbf rate "$1" burst 512kb latency 100ms
  ip netns exec "$b" tc qdisc replace dev "$vb" root tbf rate "$1" burst 512kb latency 100ms
}
link_bytes() {
  echo $(( $(ip netns exec "$a" cat /sys/class/net/"$va"/statistics/tx_bytes) +
           $(ip netns exec "$b" cat /sys/class/net/"$vb"/statistics/tx_bytes) ))
}
