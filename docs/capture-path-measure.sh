#!/bin/bash
# Per-packet cost of the capture path at saturation, independent of the load ratios:
# usage: docs/capture-path-measure.sh DAEMON LABEL [SECONDS]  (root; perf, bpftool, wrk, nginx)
# nginx in netns cm-s (10.88.0.2:8080, a 1 KiB JSON document), wrk -t2 -c64 from cm-c, the
# daemon `run --sample 0` on the server veth. Prints the tap's run_time_ns/run_cnt
# (kernel.bpf_stats_enabled on for the leg only) and the capture thread's task-clock per
# exchange counted (perf stat -t over the leg + 3 s drain); perf record -t of the thread
# is left in /tmp/capmeasure/perf.data.LABEL. See docs/cost.md, "Capture path at saturation".
set -u
D=$1; L=$2; S=${3:-8}
W=/tmp/capmeasure; mkdir -p $W/www; rm -f $W/mirror.db*
python3 - <<'P' > $W/www/data.json
import json
items=[{"id":i,"name":"item %d"%i,"email":"user%d@example.com"%i,"phone":"+1-555-01%02d"%i} for i in range(12)]
s=json.dumps({"items":items}); s=s[:-1]+',"pad":"'+'x'*max(0,1024-len(s)-10)+'"}'
print(s[:1024] if len(s)>1024 else s,end='')
P
head -c 32 /dev/urandom > $W/mask.key; chmod 600 $W/mask.key
ip netns del cm-c 2>/dev/null; ip netns del cm-s 2>/dev/null
ip netns add cm-c; ip netns add cm-s
ip link add cmc0 netns cm-c type veth peer name cms0 netns cm-s
ip -n cm-c addr add 10.88.0.1/24 dev cmc0; ip -n cm-s addr add 10.88.0.2/24 dev cms0
ip -n cm-c link set cmc0 up; ip -n cm-s link set cms0 up; ip -n cm-c link set lo up; ip -n cm-s link set lo up
cat > $W/nginx.conf <<N
daemon off; worker_processes auto; pid $W/nginx.pid; error_log $W/nginx.err;
events { worker_connections 8192; }
http { access_log off; server { listen 10.88.0.2:8080 backlog=4096; listen 127.0.0.1:8081; location / { root $W/www; } } }
N
ip netns exec cm-s nginx -c $W/nginx.conf & NG=$!
sleep 1
ip netns exec cm-s $D run --iface cms0 --port 8080 --candidate http://127.0.0.1:8081 --no-egress-guard \
  --store $W/mirror.db --listen 127.0.0.1:9464 --duration 120s --mask-key-file $W/mask.key \
  --pipeline-priority idle --sample 0 > $W/daemon.out 2> $W/daemon.err & DP=$!
sleep 4
ip netns exec cm-c wrk -t2 -c64 -d2s http://10.88.0.2:8080/data.json >/dev/null
CAP=$(for t in /proc/$DP/task/*; do [ "$(cat $t/comm)" = capture ] && basename $t; done)
PROGS=$(bpftool -j prog show | python3 -c 'import json,sys; print(" ".join(str(p["id"]) for p in json.load(sys.stdin) if p.get("name")=="mirror_tap"))')
STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1
snap() { for p in $PROGS; do bpftool -j prog show id $p; echo; done | python3 -c '
import json,sys
t=c=0
for l in sys.stdin:
  l=l.strip()
  if l: j=json.loads(l); t+=j.get("run_time_ns",0); c+=j.get("run_cnt",0)
print(t,c)'; }
B0=$(snap)
met() { ip netns exec cm-s curl -s 127.0.0.1:9464/metrics | grep -E '^mirror_(exchanges_total|capture_segments|kernel_records|kernel_segments)' ; }
M0=$(ip netns exec cm-s curl -s 127.0.0.1:9464/metrics)
U0=$(awk '{print $14, $15}' /proc/$DP/task/$CAP/stat)
perf stat -e instructions,task-clock -t $CAP -x, -o $W/perfstat.$L -- sleep $((S+3)) & PS=$!
ip netns exec cm-c wrk -t2 -c64 -d${S}s --latency http://10.88.0.2:8080/data.json > $W/wrk.$L
B1=$(snap)
wait $PS
M1=$(ip netns exec cm-s curl -s 127.0.0.1:9464/metrics)
sysctl -qw kernel.bpf_stats_enabled=$STATS_WAS
# perf record of the capture thread, separately
ip netns exec cm-c wrk -t2 -c64 -d7s http://10.88.0.2:8080/data.json > /dev/null &
WP=$!; sleep 0.5
perf record -q -e cpu-clock -F 999 -g -t $CAP -o $W/perf.data.$L -- sleep 4 2>/dev/null
[ -n "${SYSWIDE:-}" ] && perf record -q -e cpu-clock -F 999 -a -o $W/perf.sys.$L -- sleep 1 2>/dev/null
wait $WP
kill -INT $DP; wait $DP; kill $NG; wait $NG 2>/dev/null
ip netns del cm-c; ip netns del cm-s
echo "== $L load: $(cat /proc/loadavg)"
grep -E "Requests/sec|99%" $W/wrk.$L
REQ=$(awk '/requests in/{print $1}' $W/wrk.$L)
read bt bc <<<"$B0"; read at ac <<<"$B1"
echo "$M0" > $W/metrics0.$L; echo "$M1" > $W/metrics1.$L
python3 - "$bt" "$bc" "$at" "$ac" "$REQ" $W/perfstat.$L $W/metrics0.$L $W/metrics1.$L <<'P'
import sys
bt,bc,at,ac,req=map(int,sys.argv[1:6])
ins=clk=0
for l in open(sys.argv[6]):
  f=l.split(',')
  if len(f)>2 and f[2]=='instructions' and f[0][0].isdigit(): ins=float(f[0])
  if len(f)>2 and f[2]=='task-clock': clk=float(f[0])
n=ac-bc
def ex(path):
  t=0; k={}
  for l in open(path):
    if l.startswith('mirror_exchanges_total'): t+=float(l.split()[-1])
    elif l.startswith('mirror_kernel_') and not l.startswith('#'): k[l.split()[0]]=float(l.split()[-1])
  return t,k
e0,k0=ex(sys.argv[7]); e1,k1=ex(sys.argv[8])
dex=e1-e0
print(f"exchanges counted in window (leg + 3 s drain): {dex:.0f} of {req} requests; ring_full {k1.get('mirror_kernel_ring_full_total',0)-k0.get('mirror_kernel_ring_full_total',0):.0f} records; gap drops in metrics")
print(f"tap: {n} runs, {(at-bt)/max(n,1):.0f} ns/packet, {n/max(req,1):.2f} packets/request, {(at-bt)/max(req,1):.0f} ns/request")
print(f"capture thread: {clk*1e6/max(dex,1):.0f} ns cpu/exchange counted, cpu {clk/1e3:.2f} s over leg+drain (instructions: {'n/a (no PMU in this VM)' if ins==0 else ins/max(dex,1)})")
P
echo "$M0" > $W/metrics0.$L; echo "$M1" > $W/metrics1.$L
