#!/usr/bin/env python3
"""Render the haproxy configuration corpus from the OpenStack generators' own code.

Usage:  python3 tests/corpus/render.py [--check]

The released packages are fetched with pip into $LB_CORPUS_CACHE
(default /tmp/lb-corpus-cache; nothing is downloaded when the file is already
there) and unpacked next to them.  The generator modules are then loaded
straight from the package files, with the OpenStack modules they import
(oslo.config, neutron, neutron-lib, oslo.log, ...) replaced by small stubs in
sys.modules, and driven with the objects that the agents / controllers pass to
them.  Every line of haproxy configuration in the output therefore comes from
the packages' Python code and Jinja templates; this script only builds the
input objects.  Places where a few lines of package code had to be reproduced
here instead of called are marked "REPRODUCED" below and listed in README.md.

Generators:
  neutron-lbaas-v1          cfg.py of neutron-lbaas 8.4.0 (Mitaka; vendored, see
                            vendor/neutron-lbaas-8.4.0: 8.x is not on PyPI)
  neutron-lbaas-v2-mitaka   jinja_cfg.py + templates of neutron-lbaas 8.4.0 (vendored)
  neutron-lbaas-v2-14.0.1   jinja_cfg.py + templates of neutron-lbaas 14.0.1 (PyPI wheel)
  octavia-19.0.0            combined_listeners jinja_cfg.py + templates of
                            octavia 19.0.0 (PyPI sdist) with octavia-lib 3.12.0

Output: <generator>/<scenario>.cfg, octavia-19.0.0/haproxy_user.cfg,
octavia-19.0.0/haproxy.service, octavia-19.0.0/haproxy_vrrp_check.py.txt
and MANIFEST.tsv (haproxy -c results from /usr/sbin/haproxy).
"""

import ast
import contextlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import types
import zipfile

# imported once, before any isolated_modules() block (a second copy of jinja2
# loaded later would not share jinja2.utils.missing with the first)
import jinja2  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get('LB_CORPUS_CACHE', '/tmp/lb-corpus-cache')
HAPROXY = os.environ.get('LB_CORPUS_HAPROXY', '/usr/sbin/haproxy')
VENDOR_MITAKA = os.path.join(HERE, 'vendor', 'neutron-lbaas-8.4.0')

# Every state / base directory handed to a generator lives under BASE, so a
# test can substitute its own temporary directory for this string.
BASE = '/var/lib/lb-corpus'

# (pip requirement, glob of the downloaded file, pip options)
PACKAGES = {
    'neutron-lbaas': ('neutron-lbaas==14.0.1',
                      'neutron_lbaas-14.0.1-py2.py3-none-any.whl',
                      ['--only-binary', ':all:']),
    # the sdist, because it also carries elements/ (the amphora image
    # scripts that write the haproxy user/group file)
    'octavia': ('octavia==19.0.0', 'octavia-19.0.0.tar.gz',
                ['--no-binary', ':all:']),
    'octavia-lib': ('octavia-lib==3.12.0', 'octavia_lib-3.12.0-py3-none-any.whl',
                    ['--only-binary', ':all:']),
}

# ---------------------------------------------------------------- address plan
VIP4 = '10.0.0.250'
VIP6 = 'fd00::250'
M4 = ['10.0.0.11', '10.0.0.12', '10.0.0.13']   # .13 = backup member
M6 = ['fd00::11', 'fd00::12']
PORT_TCP_LISTENER = 8080
PORT_HTTP_LISTENER = 80
PORT_TCP_LISTENER2 = 8443
PORT_TCP_MEMBER = 9000
PORT_HTTP_MEMBER = 8000
AMP_VRRP_IPS = ['10.0.0.5', '10.0.0.6']


def uid(n):
    return '5d7b9f2e-0000-4000-8000-%012x' % n


LB_ID = uid(0x1)
LISTENER_ID = uid(0x2)
POOL_ID = uid(0x3)
HM_ID = uid(0x4)
LISTENER2_ID = uid(0x5)
POOL2_ID = uid(0x6)
HM2_ID = uid(0x7)
PROJECT_ID = '5d7b9f2e00004000800000000000000a'
SUBNET_ID = uid(0x20)
VIP_PORT_ID = uid(0x21)
AMP_IDS = [uid(0x31), uid(0x32)]
MEMBER_IDS = [uid(0x11), uid(0x12), uid(0x13)]
# A member belongs to one pool and has its own id: a second pool's members are these.
MEMBER2_IDS = [uid(0x21), uid(0x22), uid(0x23)]
TLS_REF = 'https://barbican.example/v1/containers/' + uid(0x41)


# ------------------------------------------------------------- package fetching
def fetch(name):
    req, fname, opts = PACKAGES[name]
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, fname)
    if not os.path.exists(path):
        subprocess.check_call([sys.executable, '-m', 'pip', 'download',
                               '--no-deps', '--disable-pip-version-check',
                               '-d', CACHE] + opts + [req])
    dest = os.path.join(CACHE, 'unpacked', fname)
    if not os.path.isdir(dest):
        tmp = dest + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        if fname.endswith('.whl'):
            with zipfile.ZipFile(path) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(path) as t:
                t.extractall(tmp)
            (inner,) = os.listdir(tmp)
            tmp2 = tmp + '2'
            os.rename(os.path.join(tmp, inner), tmp2)
            os.rmdir(tmp)
            tmp = tmp2
        os.rename(tmp, dest)
    return dest


# ------------------------------------------------------------ module plumbing
@contextlib.contextmanager
def isolated_modules():
    """Undo every sys.modules change made while loading one generator."""
    saved = dict(sys.modules)
    try:
        yield
    finally:
        for k in list(sys.modules):
            if k not in saved:
                del sys.modules[k]
        sys.modules.update(saved)


def stub(name, **attrs):
    """Register module `name` (and its parents) in sys.modules."""
    parts = name.split('.')
    for i in range(1, len(parts) + 1):
        mname = '.'.join(parts[:i])
        if mname not in sys.modules:
            m = types.ModuleType(mname)
            m.__path__ = []
            sys.modules[mname] = m
            if i > 1:
                setattr(sys.modules['.'.join(parts[:i - 1])], parts[i - 1], m)
    mod = sys.modules[name]
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def load_file(name, path):
    """Execute a package's source file as module `name`."""
    stub(name.rpartition('.')[0]) if '.' in name else None
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    if '.' in name:
        parent, _, leaf = name.rpartition('.')
        setattr(sys.modules[parent], leaf, mod)
    spec.loader.exec_module(mod)
    return mod


def extract_defs(path, names, namespace):
    """Execute only the named top-level functions/assignments of a file.

    Used where a module's import list (cryptography, stevedore, wsme, ...)
    is far heavier than the one or two helpers the generator needs from it;
    the helpers' code is the package's own.
    """
    tree = ast.parse(open(path, encoding='utf-8').read(), path)
    body = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            body.append(node)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in names for t in node.targets):
            body.append(node)
    found = {getattr(n, 'name', None) or n.targets[0].id for n in body}
    missing = set(names) - found
    if missing:
        raise RuntimeError('%s: %s not found' % (path, sorted(missing)))
    code = compile(ast.Module(body=body, type_ignores=[]), path, 'exec')
    exec(code, namespace)
    return namespace


class FakeOpt:
    def __init__(self, name, default=None, **kwargs):
        self.name = name
        self.default = default


class FakeConf:
    """Just enough of oslo_config.cfg.CONF: register_opts + attribute access."""

    def __init__(self):
        self._groups = {}

    def register_opts(self, opts, group=None):
        g = self._groups.setdefault(group or 'DEFAULT', types.SimpleNamespace())
        for o in opts:
            setattr(g, o.name, o.default)

    def register_opt(self, opt, group=None):
        self.register_opts([opt], group)

    def __getattr__(self, name):
        try:
            return self._groups[name]
        except KeyError:
            raise AttributeError(name)


def fake_oslo_cfg():
    cfg = types.ModuleType('oslo_config.cfg')
    cfg.CONF = FakeConf()
    for t in ('StrOpt', 'IntOpt', 'BoolOpt', 'ListOpt', 'FloatOpt', 'PortOpt',
              'Opt', 'DictOpt', 'MultiStrOpt', 'HostAddressOpt'):
        setattr(cfg, t, FakeOpt)
    cfg.DeprecatedOpt = lambda *a, **k: None
    return cfg


def six_module():
    try:
        import six  # noqa: F401
        return six
    except ImportError:  # the two names the generators use
        return stub('six', moves=types.SimpleNamespace(range=range))


NS = types.SimpleNamespace


# ----------------------------------------------------------------- scenarios
def member(i, address, port, enabled=True, backup=False, ids=MEMBER_IDS):
    return dict(id=ids[i], address=address, port=port,
                enabled=enabled, backup=backup)


def pool(protocol, algorithm='ROUND_ROBIN', members=None, hm=None, sp=None,
         enabled=True, pid=POOL_ID):
    if members is None:
        port = PORT_HTTP_MEMBER if protocol == 'HTTP' else PORT_TCP_MEMBER
        ids = MEMBER_IDS if pid == POOL_ID else MEMBER2_IDS
        members = [member(0, M4[0], port, ids=ids), member(1, M4[1], port, ids=ids)]
    return dict(id=pid, protocol=protocol, algorithm=algorithm,
                members=members, hm=hm, sp=sp, enabled=enabled)


def listener(protocol, port, pool_=None, connection_limit=None, enabled=True,
             lid=LISTENER_ID, **extra):
    d = dict(id=lid, protocol=protocol, port=port, pool=pool_,
             connection_limit=connection_limit, enabled=enabled)
    d.update(extra)
    return d


def hm(type_, **kw):
    d = dict(id=HM_ID, type=type_, delay=2, timeout=1, max_retries=3,
             http_method=None, url_path=None, expected_codes=None)
    if type_ in ('HTTP', 'HTTPS'):
        d.update(http_method='GET', url_path='/healthz', expected_codes='200')
    d.update(kw)
    return d


def tcp_listener(**pkw):
    return listener('TCP', PORT_TCP_LISTENER, pool('TCP', **pkw))


def http_listener(**pkw):
    return listener('HTTP', PORT_HTTP_LISTENER, pool('HTTP', **pkw))


def scenario(name, listeners, note, vip=VIP4, topology='SINGLE',
             amp_details=None):
    return dict(name=name, listeners=listeners, vip=vip, topology=topology,
                note=note, amp_details=amp_details)


V1 = 'neutron-lbaas-v1'
V2M = 'neutron-lbaas-v2-mitaka'
V2 = 'neutron-lbaas-v2-14.0.1'
OCT = 'octavia-19.0.0'
ALL = (V1, V2M, V2, OCT)
V2UP = (V2M, V2, OCT)

SCENARIOS = [
    (ALL, scenario('tcp-roundrobin', [tcp_listener()],
                   'TCP listener 8080, ROUND_ROBIN pool, 2 members')),
    (ALL, scenario('tcp-leastconn', [tcp_listener(algorithm='LEAST_CONNECTIONS')],
                   'TCP listener 8080, LEAST_CONNECTIONS pool, 2 members')),
    (ALL, scenario('tcp-source-ip', [tcp_listener(algorithm='SOURCE_IP')],
                   'TCP listener 8080, SOURCE_IP pool, 2 members')),
    (ALL, scenario('http-roundrobin', [http_listener()],
                   'HTTP listener 80, HTTP pool ROUND_ROBIN, members :8000')),
    (ALL, scenario('monitor-tcp', [tcp_listener(hm=hm('TCP'))],
                   'TCP pool + TCP (connect) health monitor delay 2 timeout 1 retries 3')),
    (ALL, scenario('monitor-http', [http_listener(hm=hm('HTTP'))],
                   'HTTP pool + HTTP monitor GET /healthz expect 200')),
    (ALL, scenario('monitor-https',
                   [listener('HTTPS', PORT_TCP_LISTENER2,
                             pool('HTTPS', hm=hm('HTTPS')))],
                   'HTTPS (passthrough, mode tcp) listener 8443 + HTTPS monitor GET /healthz')),
    ((OCT,), scenario('monitor-ping', [tcp_listener(hm=hm('PING'))],
                   'TCP pool + PING monitor (external-check + ping-wrapper.sh)')),
    ((OCT,), scenario('monitor-tls-hello', [listener(
        'HTTPS', PORT_TCP_LISTENER2, pool('HTTPS', hm=hm('TLS-HELLO')))],
        'HTTPS (mode tcp) listener 8443 + TLS-HELLO monitor')),
    (ALL, scenario('persist-source-ip',
                   [tcp_listener(sp=dict(type='SOURCE_IP', cookie_name=None))],
                   'TCP pool with SOURCE_IP session persistence (stick-table)')),
    (ALL, scenario('persist-http-cookie',
                   [http_listener(sp=dict(type='HTTP_COOKIE', cookie_name=None))],
                   'HTTP pool with HTTP_COOKIE persistence (cookie SRV insert)')),
    (ALL, scenario('persist-app-cookie',
                   [http_listener(sp=dict(type='APP_COOKIE', cookie_name='JSESSIONID'))],
                   'HTTP pool with APP_COOKIE JSESSIONID persistence')),
    (ALL, scenario('connlimit', [listener('TCP', PORT_TCP_LISTENER, pool('TCP'),
                                          connection_limit=100)],
                   'TCP listener with connection_limit 100')),
    (V2UP, scenario('admin-down-listener', [
        tcp_listener(),
        listener('TCP', PORT_TCP_LISTENER2, pool('TCP', pid=POOL2_ID),
                 enabled=False, lid=LISTENER2_ID)],
        'two TCP listeners (8080 up, 8443 admin_state_up=false with its own pool); '
        'a single down listener is not deployed at all by the v1/v2 agents')),
    (ALL, scenario('admin-down-pool', [tcp_listener(enabled=False)],
                   'TCP listener 8080, pool admin_state_up=false')),
    (ALL, scenario('admin-down-member', [tcp_listener(members=[
        member(0, M4[0], PORT_TCP_MEMBER),
        member(1, M4[1], PORT_TCP_MEMBER, enabled=False)], hm=hm('TCP'))],
        'TCP pool + TCP monitor, member 10.0.0.12 admin_state_up=false')),
    ((OCT,), scenario('backup-member', [tcp_listener(members=[
        member(0, M4[0], PORT_TCP_MEMBER), member(1, M4[1], PORT_TCP_MEMBER),
        member(2, M4[2], PORT_TCP_MEMBER, backup=True)], hm=hm('TCP'))],
        'TCP pool + TCP monitor, 2 members + backup member 10.0.0.13')),
    (ALL, scenario('ipv6-tcp', [tcp_listener(members=[
        member(0, M6[0], PORT_TCP_MEMBER), member(1, M6[1], PORT_TCP_MEMBER)])],
        'TCP listener 8080 on VIP fd00::250, members fd00::11/fd00::12', vip=VIP6)),
    (ALL, scenario('ipv6-persist-source-ip', [tcp_listener(members=[
        member(0, M6[0], PORT_TCP_MEMBER), member(1, M6[1], PORT_TCP_MEMBER)],
        sp=dict(type='SOURCE_IP', cookie_name=None))],
        'IPv6 TCP listener + SOURCE_IP persistence (neutron writes stick-table '
        'type ip, Octavia type ipv6)', vip=VIP6)),
    (V2UP, scenario('listener-no-pool', [listener('TCP', PORT_TCP_LISTENER, None)],
                    'TCP listener without a pool: frontend without default_backend')),
    (V2UP, scenario('mixed-tcp-http', [
        tcp_listener(),
        listener('HTTP', PORT_HTTP_LISTENER, pool('HTTP', pid=POOL2_ID),
                 lid=LISTENER2_ID)],
        'one load balancer with a TCP listener 8080 and an HTTP listener 80')),
    ((OCT,), scenario('proxy-protocol', [listener('TCP', PORT_TCP_LISTENER,
                                                  pool('PROXY'))],
                      'TCP listener + PROXY pool (send-proxy)')),
    ((OCT,), scenario('proxyv2', [listener('TCP', PORT_TCP_LISTENER,
                                           pool('PROXYV2'))],
                      'TCP listener + PROXYV2 pool (send-proxy-v2)')),
    ((OCT,), scenario('active-standby', [tcp_listener(
        sp=dict(type='SOURCE_IP', cookie_name=None), hm=hm('TCP'))],
        'ACTIVE_STANDBY: peers section (amphorae 10.0.0.5/10.0.0.6:1025), TCP monitor and '
        'SOURCE_IP stick-table synced to peers; rendered for the MASTER amphora, '
        'whose local peer name (haproxy -L) is LJss7WmtbVSgGyM1DbZNYuxQ14o: '
        'without -L haproxy -c warns and drops the peers section',
        topology='ACTIVE_STANDBY')),
    ((OCT,), scenario('terminated-https', [listener(
        'TERMINATED_HTTPS', 443, pool('HTTP'), tls=True)],
        'TERMINATED_HTTPS listener 443 (crt-list under the cert dir, which does '
        'not exist here), HTTP pool')),
    ((OCT,), scenario('prometheus', [
        tcp_listener(),
        listener('PROMETHEUS', 9100, None, lid=LISTENER2_ID)],
        'TCP listener 8080 + PROMETHEUS listener 9100 (prometheus-exporter service)')),
    ((OCT,), scenario('timeouts', [listener(
        'HTTP', PORT_HTTP_LISTENER, pool('HTTP', hm=hm('HTTP')),
        timeout_client_data=20000, timeout_member_connect=3000,
        timeout_member_data=40000, timeout_tcp_inspect=500,
        insert_headers={'X-Forwarded-For': 'true', 'X-Forwarded-Port': 'true',
                        'X-Forwarded-Proto': 'true'})],
        'HTTP listener with non-default timeouts (client 20s, connect 3s, '
        'server 40s, tcp inspect 0.5s) and X-Forwarded-* headers')),
    ((OCT,), scenario('cpu-pinning', [tcp_listener()],
                      'amphora with the "amphora" TuneD profile and 4 vCPUs: '
                      'nbthread 3 + cpu-map',
                      amp_details={'active_tuned_profiles': 'virtual-guest optimize-serial-console amphora',
                                   'cpu_count': 4,
                                   'memory': {'free': 3000000, 'buffers': 100000,
                                              'cached': 400000}})),
]

# The generators support more of the scenarios above than are rendered: to keep
# the corpus small, the two Mitaka-era generators only get the scenarios where
# their output differs from neutron-lbaas 14.0.1 in a way that matters
# (tabs, no global maxconn, "timeout check 1" without unit, appsession,
# "disabled" lines, option tcplog on HTTP), and neutron-lbaas 14.0.1 skips
# admin-down-pool (its template ignores pool admin_state_up: the output equals
# tcp-roundrobin).
SELECT = {
    V1: ['tcp-roundrobin', 'http-roundrobin', 'monitor-http', 'monitor-https',
         'persist-source-ip', 'persist-http-cookie', 'persist-app-cookie',
         'connlimit', 'admin-down-pool'],
    V2M: ['tcp-roundrobin', 'http-roundrobin', 'monitor-tcp', 'monitor-http',
          'persist-app-cookie', 'listener-no-pool', 'mixed-tcp-http'],
    V2: [sc['name'] for sup, sc in SCENARIOS
         if V2 in sup and sc['name'] != 'admin-down-pool'],
    OCT: [sc['name'] for sup, sc in SCENARIOS if OCT in sup],
}
for _g, _names in SELECT.items():
    for _n in _names:
        assert any(sc['name'] == _n and _g in sup for sup, sc in SCENARIOS), _n


# ======================================================= neutron-lbaas v1
def load_v1():
    src = os.path.join(VENDOR_MITAKA, 'neutron_lbaas', 'services',
                       'loadbalancer')
    with isolated_modules():
        six_module()
        stub('neutron.common.utils', replace_file=None)
        # neutron.plugins.common.constants (Mitaka): the two names cfg.py reads
        stub('neutron.plugins.common.constants',
             ACTIVE_PENDING_STATUSES=('ACTIVE', 'PENDING_CREATE', 'PENDING_UPDATE'),
             INACTIVE='INACTIVE')
        load_file('neutron_lbaas.services.loadbalancer.constants',
                  os.path.join(src, 'constants.py'))
        return load_file('neutron_lbaas.services.loadbalancer.drivers.haproxy.cfg',
                         os.path.join(src, 'drivers', 'haproxy', 'cfg.py'))


def render_v1(cfgmod, sc):
    (lst,) = sc['listeners']
    p = lst['pool']
    # The logical_config dict of the v1 plugin's get_logical_device()
    # (neutron_lbaas/services/loadbalancer/drivers/common/agent_driver_base.py)
    logical = {
        'pool': {'id': p['id'], 'protocol': p['protocol'],
                 'lb_method': p['algorithm'],
                 'admin_state_up': p['enabled'], 'status': 'ACTIVE'},
        'vip': {'id': lst['id'], 'protocol': lst['protocol'],
                'protocol_port': lst['port'],
                'connection_limit': (lst['connection_limit']
                                     if lst['connection_limit'] else -1),
                'admin_state_up': lst['enabled'], 'status': 'ACTIVE',
                'port': {'id': VIP_PORT_ID,
                         'fixed_ips': [{'subnet_id': SUBNET_ID,
                                        'ip_address': sc['vip']}]}},
        'members': [{'id': m['id'], 'address': m['address'],
                     'protocol_port': m['port'], 'weight': 1,
                     'admin_state_up': m['enabled'], 'status': 'ACTIVE'}
                    for m in p['members']],
        'healthmonitors': [],
    }
    if p['sp']:
        logical['vip']['session_persistence'] = dict(p['sp'])
    if p['hm']:
        h = p['hm']
        logical['healthmonitors'].append(dict(
            id=h['id'], type=h['type'], delay=h['delay'], timeout=h['timeout'],
            max_retries=h['max_retries'], http_method=h['http_method'],
            url_path=h['url_path'], expected_codes=h['expected_codes'],
            admin_state_up=True, status='ACTIVE'))
    # namespace_driver._spawn(): state path <loadbalancer_state_path>/<pool_id>/
    sock = os.path.join(BASE, 'lbaas', p['id'], 'sock')
    # save_config()'s body, minus the final n_utils.replace_file() write:
    data = []
    data.extend(cfgmod._build_global(logical, socket_path=sock,
                                     user_group='nogroup'))
    data.extend(cfgmod._build_defaults(logical))
    data.extend(cfgmod._build_frontend(logical))
    data.extend(cfgmod._build_backend(logical))
    return '\n'.join(data)


# ======================================================= neutron-lbaas v2
def load_v2(root, mitaka):
    with isolated_modules():
        six_module()
        cfg = fake_oslo_cfg()
        stub('oslo_config', cfg=cfg)
        sys.modules['oslo_config.cfg'] = cfg
        if mitaka:
            stub('neutron.common.utils', replace_file=None)
            stub('neutron.plugins.common.constants',
                 ACTIVE_PENDING_STATUSES=('ACTIVE', 'PENDING_CREATE', 'PENDING_UPDATE'),
                 INACTIVE='INACTIVE')
        else:
            stub('neutron_lib.utils.file', replace_file=None)
            # neutron_lib.constants: the two names jinja_cfg.py reads
            stub('neutron_lib.constants',
                 ACTIVE_PENDING_STATUSES=('ACTIVE', 'PENDING_CREATE', 'PENDING_UPDATE'),
                 INACTIVE='INACTIVE')
        stub('neutron_lbaas._i18n', _=lambda s: s)

        class _NoCerts:  # TLS is not exercised for neutron-lbaas
            class CertManager:
                pass
        stub('neutron_lbaas.common.cert_manager', get_backend=lambda: _NoCerts)
        stub('neutron_lbaas.common.tls_utils.cert_parser')
        stub('neutron_lbaas.services.loadbalancer.data_models')
        load_file('neutron_lbaas.services.loadbalancer.constants',
                  os.path.join(root, 'neutron_lbaas', 'services',
                               'loadbalancer', 'constants.py'))
        if mitaka:
            path = os.path.join(root, 'neutron_lbaas', 'services', 'loadbalancer',
                                'drivers', 'haproxy', 'jinja_cfg.py')
        else:
            path = os.path.join(root, 'neutron_lbaas', 'drivers', 'haproxy',
                                'jinja_cfg.py')
        mod = load_file('neutron_lbaas_jinja_cfg_%s' % ('mitaka' if mitaka else 'v2'),
                        path)
        mod.JINJA_ENV = None
        return mod


def v2_objects(sc):
    """The neutron_lbaas.services.loadbalancer.data_models objects the v2
    agent hands to the driver (only the attributes jinja_cfg reads)."""
    pools = []

    def mkpool(p):
        hmo = None
        if p['hm']:
            h = p['hm']
            hmo = NS(id=h['id'], type=h['type'], delay=h['delay'],
                     timeout=h['timeout'], max_retries=h['max_retries'],
                     http_method=h['http_method'], url_path=h['url_path'],
                     expected_codes=h['expected_codes'] or '200',
                     admin_state_up=True)
        po = NS(id=p['id'], protocol=p['protocol'], lb_algorithm=p['algorithm'],
                admin_state_up=p['enabled'], provisioning_status='ACTIVE',
                healthmonitor=hmo,
                session_persistence=NS(**p['sp']) if p['sp'] else None,
                members=[NS(id=m['id'], address=m['address'],
                            protocol_port=m['port'], weight=1,
                            admin_state_up=m['enabled'], subnet_id=SUBNET_ID,
                            provisioning_status='ACTIVE')
                         for m in p['members']])
        pools.append(po)
        return po

    listeners = []
    for lst in sc['listeners']:
        listeners.append(NS(
            id=lst['id'], protocol=lst['protocol'], protocol_port=lst['port'],
            connection_limit=lst['connection_limit'] or -1,
            admin_state_up=lst['enabled'], provisioning_status='ACTIVE',
            default_pool=mkpool(lst['pool']) if lst['pool'] else None,
            default_tls_container_id=None, sni_containers=[],
            tenant_id=PROJECT_ID, loadbalancer_id=LB_ID))
    return NS(id=LB_ID, name='lb-corpus', vip_address=sc['vip'],
              admin_state_up=True, provisioning_status='ACTIVE',
              listeners=listeners, pools=pools)


def render_v2(mod, sc):
    lb = v2_objects(sc)
    # HaproxyNSDriver._spawn() paths, with loadbalancer_state_path = BASE/lbaas
    # (state dir <loadbalancer_state_path>/v2/<lb_id>/)
    state_dir = os.path.join(BASE, 'lbaas', 'v2', lb.id)
    sock = os.path.join(state_dir, 'haproxy_stats.sock')
    base_dir = os.path.join(state_dir, '')
    return mod.render_loadbalancer_obj(lb, 'nogroup', sock, base_dir)


# ============================================================ Octavia 19
def octavia_conf_defaults(config_py, constants, lib_consts):
    """Octavia's CONF defaults, read from octavia/common/config.py itself:
    every cfg.XxxOpt('name', default=<expr>) of every *_opts list that is
    registered with cfg.CONF.register_opts(<list>, group=...)."""
    tree = ast.parse(open(config_py, encoding='utf-8').read())
    lists = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.List)
                and isinstance(node.targets[0], ast.Name)):
            lists[node.targets[0].id] = node.value.elts
    env = {'constants': constants, 'lib_consts': lib_consts, 'os': os,
           'sys': sys, '_': lambda s: s}
    groups = {}
    for node in tree.body:
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            continue
        call = node.value
        if not (isinstance(call.func, ast.Attribute)
                and call.func.attr == 'register_opts'
                and isinstance(call.args[0], ast.Name)
                and call.args[0].id in lists):
            continue
        group = 'DEFAULT'
        for kw in call.keywords:
            if kw.arg == 'group':
                group = ast.literal_eval(kw.value)
        g = groups.setdefault(group, {})
        for opt in lists[call.args[0].id]:
            if not isinstance(opt, ast.Call) or not opt.args:
                continue
            name = ast.literal_eval(opt.args[0])
            default = None
            for kw in opt.keywords:
                if kw.arg == 'default':
                    try:
                        default = eval(compile(ast.Expression(kw.value),
                                               config_py, 'eval'), env)
                    except Exception:
                        default = None
            g[name] = default
    return groups


# Deployment settings (the rest stay at Octavia's defaults):
OCTAVIA_CONF_OVERRIDES = {
    'haproxy_amphora': {'base_path': BASE + '/octavia',
                        'base_cert_dir': BASE + '/octavia/certs'},
}
# haproxy version reported by the amphora (the agent runs `haproxy -v`)
AMP_HAPROXY_VERSION = ('2', '6')


def load_octavia():
    root = fetch('octavia')
    libroot = fetch('octavia-lib')
    oc = os.path.join(root, 'octavia')
    with isolated_modules():
        stub('oslo_log.log', getLogger=logging.getLogger)
        sys.modules['oslo_log'].log = sys.modules['oslo_log.log']

        # REPRODUCED: oslo_utils.versionutils.is_compatible (oslo.utils and its
        # dependency 'packaging' are not installed here).  Same semantics for
        # the dotted numeric versions jinja_cfg passes.
        def is_compatible(requested_version, current_version, same_major=True):
            def parts(v):
                return tuple(int(x) for x in v.split('.'))
            req, cur = parts(requested_version), parts(current_version)
            if same_major and req[0] != cur[0]:
                return False
            n = max(len(req), len(cur))
            return cur + (0,) * (n - len(cur)) >= req + (0,) * (n - len(req))
        stub('oslo_utils.versionutils', is_compatible=is_compatible)

        lib_consts = load_file('octavia_lib.common.constants',
                               os.path.join(libroot, 'octavia_lib', 'common',
                                            'constants.py'))
        constants = load_file('octavia.common.constants',
                              os.path.join(oc, 'common', 'constants.py'))
        utils = stub('octavia.common.utils')
        ns = {'re': re, 'base64': __import__('base64'),
              'hashlib': __import__('hashlib')}
        extract_defs(os.path.join(oc, 'common', 'utils.py'),
                     ['base64_sha1_string', 'expand_expected_codes'], ns)
        utils.base64_sha1_string = ns['base64_sha1_string']
        utils.expand_expected_codes = ns['expand_expected_codes']
        vns = {'re': re}
        extract_defs(os.path.join(oc, 'common', 'validate.py'),
                     ['VALID_CIPHER_RE', 'INVALID_URL_CHARS_RE'], vns)
        stub('octavia.common.validate', **{k: vns[k] for k in
                                           ('VALID_CIPHER_RE', 'INVALID_URL_CHARS_RE')})
        stub('octavia.db.models', Listener=object)

        cfg = fake_oslo_cfg()
        defaults = octavia_conf_defaults(os.path.join(oc, 'common', 'config.py'),
                                         constants, lib_consts)
        for group, opts in defaults.items():
            opts = dict(opts)
            opts.update(OCTAVIA_CONF_OVERRIDES.get(group, {}))
            cfg.CONF.register_opts([FakeOpt(k, v) for k, v in opts.items()],
                                   group)
        stub('octavia.common.config', cfg=cfg)

        jc = load_file('octavia.common.jinja.haproxy.combined_listeners.jinja_cfg',
                       os.path.join(oc, 'common', 'jinja', 'haproxy',
                                    'combined_listeners', 'jinja_cfg.py'))
        jc.JINJA_ENV = None
        compat = load_file(
            'octavia.amphorae.backends.agent.api_server.haproxy_compatibility',
            os.path.join(oc, 'amphorae', 'backends', 'agent', 'api_server',
                         'haproxy_compatibility.py'))
        compat.get_haproxy_versions = lambda: tuple(int(x) for x in AMP_HAPROXY_VERSION)
        return NS(jc=jc, constants=constants, lib_consts=lib_consts,
                  conf=cfg.CONF, utils=utils, compat=compat, root=root)


def octavia_objects(o, sc):
    """octavia.common.data_models objects as the controller worker passes them
    (only the attributes jinja_cfg / the templates read)."""
    conf = o.conf
    amps = []
    topo = sc['topology']
    roles = ['MASTER', 'BACKUP'] if topo == 'ACTIVE_STANDBY' else [None]
    for i, role in enumerate(roles):
        amps.append(NS(id=AMP_IDS[i], lb_network_ip='192.0.2.%d' % (10 + i),
                       vrrp_ip=AMP_VRRP_IPS[i], ha_ip=sc['vip'],
                       vrrp_port_id=uid(0x51 + i), ha_port_id=VIP_PORT_ID,
                       role=role, status='ALLOCATED', vrrp_interface=None,
                       vrrp_priority=(100 if role == 'MASTER' else
                                      90 if role else None)))
    lb = NS(id=LB_ID, project_id=PROJECT_ID, vip=NS(ip_address=sc['vip']),
            additional_vips=[], topology=topo, enabled=True, amphorae=amps)

    def mkpool(p):
        h = p['hm']
        hmo = None
        if h:
            hmo = NS(id=h['id'], type=h['type'], delay=h['delay'],
                     timeout=h['timeout'], fall_threshold=h['max_retries'],
                     rise_threshold=h['max_retries'],
                     http_method=h['http_method'], url_path=h['url_path'],
                     expected_codes=h['expected_codes'], enabled=True,
                     http_version=None, domain_name=None,
                     provisioning_status='ACTIVE')
        return NS(id=p['id'], protocol=p['protocol'], lb_algorithm=p['algorithm'],
                  enabled=p['enabled'], operating_status='ONLINE',
                  provisioning_status='ACTIVE', health_monitor=hmo,
                  session_persistence=NS(**p['sp']) if p['sp'] else None,
                  tls_enabled=False, tls_certificate_id=None,
                  ca_tls_certificate_id=None, crl_container_id=None,
                  tls_ciphers=None, tls_versions=None, alpn_protocols=None,
                  members=[NS(id=m['id'], ip_address=m['address'],
                              protocol_port=m['port'], weight=1,
                              enabled=m['enabled'], subnet_id=SUBNET_ID,
                              operating_status='ONLINE',
                              provisioning_status='ACTIVE',
                              monitor_address=None, monitor_port=None,
                              backup=m['backup'])
                           for m in p['members']])

    listeners = []
    certs = {}
    for lst in sc['listeners']:
        tls = lst.get('tls', False)
        p = mkpool(lst['pool']) if lst['pool'] else None
        # API defaults applied when a TLS-terminating listener is created
        api = conf.api_settings
        lo = NS(id=lst['id'], protocol=lst['protocol'], protocol_port=lst['port'],
                insert_headers=lst.get('insert_headers', {}),
                enabled=lst['enabled'], provisioning_status='ACTIVE',
                timeout_client_data=lst.get('timeout_client_data'),
                timeout_member_connect=lst.get('timeout_member_connect'),
                timeout_member_data=lst.get('timeout_member_data'),
                timeout_tcp_inspect=lst.get('timeout_tcp_inspect'),
                connection_limit=lst['connection_limit'] or -1,
                tls_certificate_id=TLS_REF if tls else None,
                client_ca_tls_certificate_id=None, client_crl_container_id=None,
                client_authentication='NONE',
                tls_ciphers=api.default_listener_ciphers if tls else None,
                tls_versions=list(api.default_listener_tls_versions) if tls else None,
                alpn_protocols=list(api.default_listener_alpn_protocols) if tls else None,
                hsts_max_age=None, hsts_include_subdomains=False,
                hsts_preload=False,
                pools=[p] if p else [], default_pool=p, l7policies=[],
                load_balancer=lb, peer_port=1025)
        listeners.append(lo)
        # AmphoraAPIDriver.update_amphora_listeners() certs dict
        certs[lo.tls_certificate_id] = (NS(id='%s.pem' % lo.id) if tls else None)
        certs[None] = None
    lb.listeners = listeners
    return lb, amps, certs


DEFAULT_AMP_DETAILS = {
    # AmphoraAPIClient.get_details() of a 2-vCPU amphora without the TuneD
    # "amphora" profile (fixed numbers so the output is deterministic)
    'active_tuned_profiles': 'virtual-guest',
    'cpu_count': 2,
    'memory': {'total': 2000000, 'free': 1500000, 'buffers': 40000,
               'cached': 200000, 'swap_used': 0, 'shared': 0, 'slab': 20000,
               'committed_AS': 400000},
}


def render_octavia(o, sc):
    lb, amps, certs = octavia_objects(o, sc)
    conf = o.conf
    # AmphoraAPIDriver.__init__ / update_amphora_listeners()
    templater = o.jc.JinjaTemplater(
        base_amp_path=conf.haproxy_amphora.base_path,
        base_crt_dir=conf.haproxy_amphora.base_cert_dir,
        haproxy_template=conf.haproxy_amphora.haproxy_template,
        connection_logging=conf.haproxy_amphora.connection_logging)
    config = templater.build_config(
        host_amphora=amps[0], listeners=lb.listeners, tls_certs=certs,
        haproxy_versions=list(AMP_HAPROXY_VERSION),
        amp_details=sc['amp_details'] or DEFAULT_AMP_DETAILS)
    # What the amphora agent does before writing haproxy.cfg
    # (Loadbalancer.upload_haproxy_config in
    # amphorae/backends/agent/api_server/loadbalancer.py).
    # REPRODUCED (inline statement of that method):
    new_config = re.sub(r"\s+group\s.+", "", config)
    new_config = o.compat.process_cfg_for_version_compat(new_config)
    return new_config


def octavia_extras(o, outdir):
    """haproxy_user.cfg, haproxy.service and the vrrp check script note."""
    root = o.root
    # 1. the user/group file written by the amphora image element
    #    elements/haproxy-octavia/post-install.d/20-haproxy-user-group-config:
    #    run its here-document with DISTRO_NAME=debian (-> nogroup).
    script = os.path.join(root, 'elements', 'haproxy-octavia', 'post-install.d',
                          '20-haproxy-user-group-config')
    text = open(script, encoding='utf-8').read()
    m = re.search(r"cat >> (\S+) <<EOF\n(.*?)\nEOF", text, re.S)
    body = subprocess.run(
        ['bash', '-c', 'set -eu; ' + text.split('cat >>')[0] +
         'cat <<EOF\n' + m.group(2) + '\nEOF\n'],
        env={'DISTRO_NAME': 'debian', 'PATH': os.environ.get('PATH', '/usr/bin:/bin')},
        check=True, capture_output=True, text=True).stdout
    write(os.path.join(outdir, 'haproxy_user.cfg'), body)

    # 2. the systemd unit, rendered like Loadbalancer.upload_haproxy_config does
    import jinja2
    tdir = os.path.join(root, 'octavia', 'amphorae', 'backends', 'agent',
                        'api_server', 'templates')
    # same Environment as api_server/loadbalancer.py's module-level j2_env
    env = jinja2.Environment(autoescape=True,
                             loader=jinja2.FileSystemLoader(tdir))
    c = o.constants
    base = o.conf.haproxy_amphora.base_path
    lb_dir = os.path.join(base, LB_ID)   # util.haproxy_dir()
    peer_name = o.utils.base64_sha1_string(AMP_IDS[0]).rstrip('=')
    unit = env.get_template('systemd.conf.j2').render(
        peer_name=peer_name,
        haproxy_pid=os.path.join(lb_dir, LB_ID + '.pid'),        # util.pid_path
        haproxy_cmd=o.conf.haproxy_amphora.haproxy_cmd,
        haproxy_cfg=os.path.join(lb_dir, 'haproxy.cfg'),         # util.config_path
        haproxy_state_file=os.path.join(lb_dir, 'servers-state'),
        haproxy_socket=os.path.join(base, LB_ID + '.sock'),
        haproxy_user_group_cfg=c.HAPROXY_USER_GROUP_CFG,
        amphora_netns=c.AMP_NETNS_SVC_PREFIX,
        amphora_nsname=c.AMPHORA_NAMESPACE,
        haproxy_major_version=int(AMP_HAPROXY_VERSION[0]),
        haproxy_minor_version=int(AMP_HAPROXY_VERSION[1]))
    write(os.path.join(outdir, 'haproxy.service'), unit)

    # 3. keepalived's haproxy check: reference copy of the script's source
    src = open(os.path.join(root, 'octavia', 'cmd', 'haproxy_vrrp_check.py'),
               encoding='utf-8').read()
    sock = os.path.join(o.conf.haproxy_amphora.base_path, LB_ID + '.sock')
    write(os.path.join(outdir, 'haproxy_vrrp_check.py.txt'),
          '# Reference copy of octavia/cmd/haproxy_vrrp_check.py from the\n'
          '# octavia 19.0.0 sdist (Apache-2.0).  Not a haproxy config.\n'
          '# How keepalived uses it (octavia 19.0.0, amphora agent):\n'
          '#  - util.vrrp_check_script_update() writes\n'
          '#    <base_path>/vrrp/check_scripts/haproxy_check_script.sh containing\n'
          '#      haproxy-vrrp-check <stats socket of every LB>; exit $?\n'
          '#    i.e. for this corpus:\n'
          '#      haproxy-vrrp-check %s; exit $?\n'
          '#    (or "exit 1" when the amphora has no load balancer)\n' % sock +
          '#  - keepalived_check_script.conf.j2 runs every script of that\n'
          '#    directory and exits with the sum of their statuses.\n'
          '#  - haproxy-vrrp-check (below) connects to each unix socket, sends\n'
          '#    "show stat -1 -1 -1" and reads to EOF; a socket counts 0 when\n'
          '#    any data came back, 1 when none; any exception (socket missing,\n'
          '#    refused, 5 s timeout) exits 1.  Exit status = sum.\n'
          '#' + '-' * 70 + '\n' + src)
    return peer_name


# ================================================================== driver
def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def haproxy_check(files):
    cmd = [HAPROXY, '-c']
    for f in files:
        cmd += ['-f', f]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    out = (r.stdout + r.stderr).strip().splitlines()
    alerts = [line for line in out if '[ALERT]' in line]
    first = alerts[0] if alerts else (out[0] if out else '')
    # drop the "[ALERT]    (pid) : " prefix, which varies per run
    first = re.sub(r'^\[ALERT\]\s+\(\d+\)\s*:\s*', '', first)
    first = first.replace(HERE + '/', '')
    return ('valid' if r.returncode == 0 else 'invalid'), first


def kind_of(text):
    modes = set(re.findall(r'^\s*mode\s+(\w+)', text, re.M))
    if modes == {'tcp'}:
        return 'tcp'
    if modes == {'http'}:
        return 'http'
    return 'mixed' if modes else 'tcp'


def main():
    nl14 = fetch('neutron-lbaas')
    gens = {
        V1: (load_v1(), render_v1),
        V2M: (load_v2(VENDOR_MITAKA, mitaka=True), render_v2),
        V2: (load_v2(nl14, mitaka=False), render_v2),
        OCT: (load_octavia(), render_octavia),
    }
    for g in gens:
        shutil.rmtree(os.path.join(HERE, g), ignore_errors=True)
    rows = []
    octavia_user_cfg = os.path.join(OCT, 'haproxy_user.cfg')
    octavia_extras(gens[OCT][0], os.path.join(HERE, OCT))
    for gen in (V1, V2M, V2, OCT):
        mod, fn = gens[gen]
        for supported, sc in SCENARIOS:
            if gen not in supported or sc['name'] not in SELECT[gen]:
                continue
            text = fn(mod, sc)
            if not text.endswith('\n'):
                text += '\n'
            rel = os.path.join(gen, sc['name'] + '.cfg')
            write(os.path.join(HERE, rel), text)
            files = [rel] + ([octavia_user_cfg] if gen == OCT else [])
            verdict, msg = haproxy_check(files)
            rows.append((rel, gen, sc['name'], verdict, kind_of(text),
                         msg if verdict == 'invalid' else sc['note']))
    with open(os.path.join(HERE, 'MANIFEST.tsv'), 'w', encoding='utf-8') as f:
        f.write('# path\tgenerator\tscenario\thaproxy_c\tkind\tnote'
                '  (haproxy_c = %s -c -f <path>, plus -f %s for octavia;'
                ' note = first haproxy error line when invalid, else the'
                ' scenario)\n' % (HAPROXY, octavia_user_cfg))
        for r in rows:
            f.write('\t'.join(x.replace('\t', ' ') for x in r) + '\n')
    n_ok = sum(r[3] == 'valid' for r in rows)
    print('%d configs, %d valid, %d invalid' % (len(rows), n_ok, len(rows) - n_ok))
    for r in rows:
        if r[3] == 'invalid':
            print('  invalid: %s: %s' % (r[0], r[5]))


if __name__ == '__main__':
    main()
