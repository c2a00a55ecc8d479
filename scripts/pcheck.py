import json,subprocess,sys
# usage: pcheck.py fixture spec [variant]
fx, spec = sys.argv[1], sys.argv[2]
args=['./target/release/tlc','params',spec,'--json'] + (['--variant',sys.argv[3]] if len(sys.argv)>3 else [])
r=subprocess.run(args,capture_output=True,text=True)
if r.returncode: print(r.stderr); sys.exit(1)
ours=[(n,s) for n,s in json.loads(r.stdout)]
m=json.load(open(f'../shared/parity/{fx}/manifest.json'))
skip=set(m['not_from_formula'])
theirs=[(n,s) for n,s in m['params'] if n not in skip]
if ours==theirs: print(f'{fx}: OK {len(ours)} tensors'); sys.exit(0)
ts=dict(theirs); os_=dict(ours)
print(f'{fx}: ours {len(ours)} theirs {len(theirs)}')
for n,s in theirs:
  if n not in os_: print('  missing', n, s)
  elif os_[n]!=s: print('  shape', n, 'ours', os_[n], 'theirs', s)
for n,s in ours:
  if n not in ts: print('  unexpected', n, s)
if set(ts)==set(os_): 
  for i,(a,b) in enumerate(zip(ours,theirs)):
    if a[0]!=b[0]: print('  order differs at', i, a[0], b[0]); break
