// A real Better Auth server for backend/tests/test_e2e_better_auth.py, configured as a Next.js app would:
// e-mail + password, the jwt() and bearer() plugins, and the session cache as an HS256 JWT cookie.
// It runs Better Auth's own migrations on DATABASE_URL, listens on a free port of 127.0.0.1 and prints
// `READY <base URL>`; each verification e-mail is appended as a JSON line to VERIFICATION_EMAILS_FILE.
import { appendFileSync } from "node:fs";
import { createServer } from "node:http";

import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { bearer, jwt } from "better-auth/plugins";
import pg from "pg";

const { DATABASE_URL, BETTER_AUTH_SECRET, VERIFICATION_EMAILS_FILE } = process.env;

// The base URL (hence the tokens' iss and aud) needs the port, so listen first and build auth after.
let handle = (_request, response) => response.writeHead(503).end();
const server = createServer((request, response) => handle(request, response));
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const baseURL = `http://127.0.0.1:${server.address().port}`;

const auth = betterAuth({
  baseURL,
  secret: BETTER_AUTH_SECRET,
  database: new pg.Pool({ connectionString: DATABASE_URL, max: 4 }),
  trustedOrigins: [baseURL],
  emailAndPassword: { enabled: true },
  emailVerification: {
    sendOnSignUp: true,
    sendVerificationEmail: async ({ user, token }) => {
      appendFileSync(VERIFICATION_EMAILS_FILE, `${JSON.stringify({ email: user.email, token })}\n`);
    },
  },
  session: { cookieCache: { enabled: true, strategy: "jwt" } },
  plugins: [jwt(), bearer()],
  telemetry: { enabled: false },
});

const { runMigrations } = await getMigrations(auth.options);
await runMigrations();
handle = toNodeHandler(auth);
console.log(`READY ${baseURL}`);

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
