package main

import (
	"net/url"
	"regexp"
	"strings"
)

// redactNATS hides the passwords and tokens in a NATS server list (URLs,
// comma-separated) so that it can go into errors and logs.
func redactNATS(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "@") {
			continue
		}
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if _, hasPassword := u.User.Password(); !hasPassword {
				// nats://TOKEN@host: the user name is the secret.
				u.User = url.User("xxxxx")
			}
			parts[i] = u.Redacted()
		} else {
			parts[i] = "(NATS URL with credentials)"
		}
	}
	return strings.Join(parts, ",")
}

// secretParam reports whether a URL query parameter holds a secret:
// libpq's password and sslpassword, and the secret keys, tokens and
// signatures an S3 or other endpoint URL may carry.
func secretParam(name string) bool {
	name = strings.ToLower(name)
	for _, s := range []string{"password", "secret", "token", "signature", "credential"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// kvPassword matches a password in a libpq keyword/value connection
// string (host=h password='p w'), quoted or not.
var kvPassword = regexp.MustCompile(`(?i)\b((?:ssl)?password)\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)`)

// redactURL hides the secrets in a connection string (a Postgres DSN, an
// S3 endpoint) so that it can go into errors and logs: the password in
// its user info and the values of query parameters that hold secrets
// (postgres://h/db?password=x, as libpq allows). A libpq keyword/value
// string has its password replaced; anything else that does not parse as a
// URL is not repeated at all.
func redactURL(s string) string {
	if !strings.Contains(s, "://") {
		if strings.Contains(s, "=") {
			return kvPassword.ReplaceAllString(s, "${1}=xxxxx")
		}
		if strings.Contains(s, "@") {
			return "(connection string with credentials)"
		}
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable connection string)"
	}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			// Half a query might still be a password.
			u.RawQuery = "xxxxx"
		} else {
			for name, vals := range q {
				if secretParam(name) {
					for i := range vals {
						vals[i] = "xxxxx"
					}
				}
			}
			u.RawQuery = q.Encode()
		}
	}
	return u.Redacted()
}
