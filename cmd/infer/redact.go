package main

import (
	"net/url"
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
