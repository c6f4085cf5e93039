// The signed-in session: a bearer JWT kept in sessionStorage and the claims the dashboard shows.
// The gateway verifies the token on every call; the dashboard only reads its claims to decide
// what to show (role, meters), never to grant anything.

const KEY = "metermesh.token";

export type Role = "operator" | "consumer";

export interface Session {
  token: string;
  subject: string;
  role: Role;
  /** The meters a consumer may read (the token's `meters` claim); empty for an operator. */
  meters: string[];
  /** Expiry in ms since the epoch; null when the token has none. */
  expiresAt: number | null;
}

function base64UrlDecode(part: string): string {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** Reads a JWT's claims; throws an Error saying what is wrong with the token. */
export function parseToken(raw: string): Session {
  const token = raw.trim().replace(/^Bearer\s+/i, "");
  const parts = token.split(".");
  if (parts.length !== 3) {
    throw new Error("That is not a JWT: expected three dot-separated parts (header.claims.signature).");
  }
  let claims: Record<string, unknown>;
  try {
    claims = JSON.parse(base64UrlDecode(parts[1])) as Record<string, unknown>;
  } catch {
    throw new Error("The token's claims are not readable JSON; copy the whole token printed by `metermesh token`.");
  }
  const roles = [claims.role, ...(Array.isArray(claims.roles) ? claims.roles : [])].filter(
    (r): r is string => typeof r === "string",
  );
  const role: Role | null = roles.includes("operator") ? "operator" : roles.includes("consumer") ? "consumer" : null;
  if (role === null) {
    throw new Error("The token has no `role` claim of operator or consumer; issue one with `metermesh token`.");
  }
  const metersClaim = claims.meters ?? claims.meter_ids;
  const meters = Array.isArray(metersClaim) ? metersClaim.filter((m): m is string => typeof m === "string") : [];
  const expiresAt = typeof claims.exp === "number" ? claims.exp * 1000 : null;
  if (expiresAt !== null && expiresAt <= Date.now()) {
    throw new Error(`The token expired at ${new Date(expiresAt).toLocaleString()}; issue a new one with \`metermesh token\`.`);
  }
  return { token, subject: typeof claims.sub === "string" ? claims.sub : "(no subject)", role, meters, expiresAt };
}

export function loadSession(): Session | null {
  const token = sessionStorage.getItem(KEY);
  if (!token) return null;
  try {
    return parseToken(token);
  } catch {
    sessionStorage.removeItem(KEY);
    return null;
  }
}

export function saveSession(s: Session): void {
  sessionStorage.setItem(KEY, s.token);
}

export function clearSession(): void {
  sessionStorage.removeItem(KEY);
}
