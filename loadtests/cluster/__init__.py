"""Multi-replica harness: N samclip-serve replicas, a real redis-server and a real nginx on 127.0.0.1.

    python -m loadtests.cluster --short                      # CI: every scenario in about 90 s, demo bundle
    python -m loadtests.cluster --replicas 3 --duration 30 --users 12 --scenarios rr,hash,rr-redis
    python -m loadtests.cluster --proxy-next-upstream "error timeout"   # ingress-nginx's default retries

Modules: procs (children, cleanup), proxy (nginx configured like the chart's Ingress), scenarios (routing,
tier, faults), harness (Locust through the proxy, faults, scrapes), analysis (figures), cost (Redis hit vs
re-encode), checks (what each scenario must show), report (table).
"""
