// A test OpenID Connect provider for cvpn's tests: panva's `oidc-provider` with the users,
// clients and keys a test gives it. Test-only: never expose it beyond 127.0.0.1.
//
//   node oidc.mjs CONFIG.json
//
// CONFIG.json:
//   {
//     "port": 41234,                          // listens on host:port
//     "host": "127.0.0.1",                    // optional, the default; a test host's address
//                                             // in a network namespace when others must reach it
//     "issuer": "http://127.0.0.1:41234",     // no path: the provider is mounted at /
//     "ready_file": "/tmp/…/ready.json",      // written (atomically) once it serves
//     "admin_token": "…",                     // Bearer token for /admin/*
//     "key_alg": "RS256",                     // or "ES256"; the signing keys' algorithm
//     "ttl": { "AccessToken": 600, … },       // optional: oidc-provider ttl overrides (seconds)
//     "clients": [{ "client_id": "…", "client_secret": "…", "redirect_uris": ["…"],
//                   "skip_consent": true,     // default true: consent granted without a page
//                   … any other client metadata, passed to oidc-provider as is }],
//     "users": [{ "id": "alice", "email": "alice@example.test", "password": "…",
//                 "groups": ["vpn-users"], "name": "Alice", "disabled": false }]
//   }
//
// What it does:
// * Authorization code flow; PKCE (S256) is required of every client.
// * The sign-in page is oidc-provider's own development page (a login/password form); its
//   submission is checked here against the users' passwords (oidc-provider's development
//   interactions accept any login and never look at the password). The login field takes the
//   user's id or email. A refused sign-in goes back to the same form with "Invalid login or
//   password." on it. Disabled users cannot sign in.
// * Consent is granted without a page for clients with skip_consent (the default).
// * id_token carries email, email_verified, groups, name, preferred_username
//   (conformIdTokenClaims: false) for the scopes openid email profile groups.
// * Every authorization code grant to a client allowed refresh_token gets a refresh token
//   (offline_access is not needed).
// * Admin endpoints (POST, `Authorization: Bearer <admin_token>`):
//     /admin/disable?user=ID   the user can no longer sign in, and refresh_token grants for
//                              her fail with invalid_grant (findAccount finds no account)
//     /admin/enable?user=ID
//     /admin/rotate-keys       a new signing key becomes the signer; JWKS serves it and the
//                              old ones. With ?retire=1 the old keys are dropped instead.
//   Key rotation is live: a new Provider is built with the new key set and takes over the
//   same listener; sessions, grants and tokens live in one in-memory store shared by every
//   Provider of the process (see the adapter below), so they survive the swap.

import { generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import * as querystring from 'node:querystring';

import Provider from 'oidc-provider';
// oidc-provider's own in-memory adapter, given no store of its own: every Provider built here
// then keeps its state in the module's one store, so a Provider built for new keys takes over
// sessions, grants and tokens. (A deep import: the version is pinned exactly.)
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node oidc.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
for (const field of ['port', 'issuer', 'ready_file', 'admin_token', 'clients', 'users']) {
  if (config[field] === undefined) {
    console.error(`oidc.mjs: config lacks "${field}"`);
    process.exit(2);
  }
}
if (new URL(config.issuer).pathname !== '/') {
  console.error('oidc.mjs: the issuer must have no path (the provider is mounted at /)');
  process.exit(2);
}
const keyAlg = config.key_alg || 'RS256';
if (!['RS256', 'ES256'].includes(keyAlg)) {
  console.error(`oidc.mjs: key_alg ${keyAlg}: only RS256 and ES256`);
  process.exit(2);
}

const users = new Map(config.users.map((u) => [u.id, { ...u, disabled: !!u.disabled }]));
const skipConsent = new Set(
  config.clients.filter((c) => c.skip_consent !== false).map((c) => c.client_id),
);
const cookieKeys = [randomBytes(32).toString('hex')];

function newKey() {
  const kid = randomBytes(8).toString('hex');
  const { privateKey } = keyAlg === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: keyAlg, use: 'sig' };
}

// The signer is the first key: oidc-provider ranks equally good keys in their given order.
let keys = [newKey()];

function userByLogin(login) {
  if (users.has(login)) return users.get(login);
  for (const u of users.values()) {
    if (u.email && u.email.toLowerCase() === String(login).toLowerCase()) return u;
  }
  return undefined;
}

function passwordMatches(user, password) {
  const a = Buffer.from(String(user.password ?? ''));
  const b = Buffer.from(String(password ?? ''));
  return a.length > 0 && a.length === b.length && timingSafeEqual(a, b);
}

const SCOPES = ['openid', 'offline_access', 'email', 'profile', 'groups'];

function makeProvider() {
  const clients = config.clients.map(({ skip_consent: _skip, ...c }) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    id_token_signed_response_alg: keyAlg,
    ...c,
  }));
  const provider = new Provider(config.issuer, {
    clients,
    adapter: (model) => new MemoryAdapter(model),
    jwks: { keys },
    cookies: { keys: cookieKeys },
    scopes: SCOPES,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
    },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      IdToken: 600,
      RefreshToken: 24 * 3600,
      Interaction: 600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
      ...config.ttl,
    },
    async findAccount(_ctx, id) {
      const user = users.get(id);
      if (!user || user.disabled) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: user.email,
            email_verified: true,
            name: user.name ?? id,
            preferred_username: id,
            groups: user.groups ?? [],
          };
        },
      };
    },
    async issueRefreshToken(_ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    async loadExistingGrant(ctx) {
      const { client, session } = ctx.oidc;
      const grantId = ctx.oidc.result?.consent?.grantId
        || session.grantIdFor(client.clientId);
      let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
      if (!skipConsent.has(client.clientId)) return grant;
      if (!grant) {
        grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      }
      grant.addOIDCScope(SCOPES.join(' '));
      const requested = ctx.oidc.claims;
      const claimNames = [
        ...Object.keys(requested?.id_token ?? {}),
        ...Object.keys(requested?.userinfo ?? {}),
      ];
      if (claimNames.length) grant.addOIDCClaims(claimNames);
      await grant.save();
      return grant;
    },
  });
  // Sign-in: check the password before oidc-provider's development interaction sees the form.
  provider.use(async (ctx, next) => {
    const m = /^\/interaction\/([^/]+)$/.exec(ctx.path);
    if (m && ctx.method === 'POST') {
      const body = querystring.parse(await readBody(ctx.req));
      if (body.prompt === 'login') {
        const user = userByLogin(body.login);
        if (!user || user.disabled || !passwordMatches(user, body.password)) {
          console.error(`oidc.mjs: sign-in refused for ${JSON.stringify(body.login)}`);
          ctx.status = 303;
          ctx.redirect(`/interaction/${m[1]}?error=invalid_credentials`);
          return;
        }
        await provider.interactionFinished(ctx.req, ctx.res, {
          login: { accountId: user.id },
        }, { mergeWithLastSubmission: false });
        ctx.respond = false;
        return;
      }
      // Another prompt (a consent page): hand the parsed form on.
      ctx.request.body = body;
      await next();
      return;
    }
    await next();
    if (m && ctx.method === 'GET' && ctx.query.error && typeof ctx.body === 'string') {
      ctx.body = ctx.body.replace(
        '<form',
        '<p class="error" role="alert" id="error">Invalid login or password.</p><form',
      );
    }
  });
  provider.on('grant.error', (_ctx, err) => {
    console.error(`oidc.mjs: grant error: ${err.message} (${err.error_detail ?? err.error_description ?? ""})`);
  });
  provider.on('server_error', (_ctx, err) => {
    console.error(`oidc.mjs: server error: ${err.stack}`);
  });
  return provider;
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

let provider = makeProvider();
let handler = provider.callback();

function send(res, status, obj) {
  const text = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function admin(req, res, url) {
  const want = Buffer.from(`Bearer ${config.admin_token}`);
  const got = Buffer.from(req.headers.authorization ?? '');
  if (want.length !== got.length || !timingSafeEqual(want, got)) {
    return send(res, 401, { error: 'admin token required' });
  }
  if (req.method !== 'POST') return send(res, 405, { error: 'POST only' });
  switch (url.pathname) {
    case '/admin/disable':
    case '/admin/enable': {
      const user = users.get(url.searchParams.get('user'));
      if (!user) return send(res, 404, { error: 'no such user' });
      user.disabled = url.pathname === '/admin/disable';
      console.error(`oidc.mjs: ${user.id} ${user.disabled ? 'disabled' : 'enabled'}`);
      return send(res, 200, { user: user.id, disabled: user.disabled });
    }
    case '/admin/rotate-keys': {
      const key = newKey();
      keys = url.searchParams.get('retire') === '1' ? [key] : [key, ...keys];
      provider = makeProvider();
      handler = provider.callback();
      console.error(`oidc.mjs: signing key now ${key.kid}; keys ${keys.map((k) => k.kid).join(' ')}`);
      return send(res, 200, { signer: key.kid, kids: keys.map((k) => k.kid) });
    }
    default:
      return send(res, 404, { error: 'no such admin endpoint' });
  }
}

const server = createServer((req, res) => {
  const url = new URL(req.url, config.issuer);
  if (url.pathname.startsWith('/admin/')) return admin(req, res, url);
  return handler(req, res);
});

server.listen(config.port, config.host || '127.0.0.1', () => {
  const ready = {
    issuer: config.issuer,
    port: server.address().port,
    pid: process.pid,
    kids: keys.map((k) => k.kid),
  };
  const tmp = `${config.ready_file}.tmp`;
  writeFileSync(tmp, JSON.stringify(ready));
  renameSync(tmp, config.ready_file);
  console.error(`oidc.mjs: serving ${config.issuer}`);
});
server.on('error', (err) => {
  console.error(`oidc.mjs: ${err.message}`);
  process.exit(1);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
