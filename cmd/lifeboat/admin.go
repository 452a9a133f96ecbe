package main

import (
	"net/http"
	"net/url"

	"github.com/urfave/cli/v2"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// adminFlags select the site's server and the admin identity.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Value: "https://127.0.0.1:9443", Usage: "`URL` of the process server"},
		&cli.StringFlag{Name: "data-dir", Usage: "server `DIR`: use its admin identity (DIR/pki/admin.crt, admin.key, ca.crt)"},
		&cli.StringFlag{Name: "cert", Usage: "admin certificate `FILE` (lifeboat certs issue --role admin)"},
		&cli.StringFlag{Name: "key", Usage: "admin key `FILE`"},
		&cli.StringFlag{Name: "ca", Usage: "the site's CA certificate `FILE`"},
	}
}

// volumeFlag names one volume on the site.
func volumeFlag() cli.Flag {
	return &cli.StringFlag{Name: "volume", Required: true,
		Usage: "`VOLUME`: MACHINE/NAME, a volume id, or a NAME only one machine has"}
}

// adminClient builds the client and the API base URL (https://HOST:PORT/v1)
// from adminFlags.
func adminClient(c *cli.Context) (*http.Client, string, error) {
	cert, key, ca := c.String("cert"), c.String("key"), c.String("ca")
	if d := c.String("data-dir"); d != "" {
		p := pki.Paths(d)
		cert, key, ca = p.AdminCert, p.AdminKey, p.CACert
	}
	if cert == "" || key == "" || ca == "" {
		return nil, "", usageError("give --data-dir of the server, or --cert, --key and --ca of an admin identity")
	}
	u, err := url.Parse(c.String("server"))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, "", usageError("--server %q: want https://HOST[:PORT]", c.String("server"))
	}
	client, err := httpClient(cert, key, ca)
	if err != nil {
		return nil, "", failure("%v", err)
	}
	return client, "https://" + hostPort(u.Host) + "/v1", nil
}

// volumeURL is the API URL of the volume --volume names.
func volumeURL(c *cli.Context, base string) string {
	return base + "/volumes/" + url.PathEscape(c.String("volume")) // MACHINE/NAME keeps its slash escaped
}

// apiCall is pipeline.Call (an API request, its JSON answer decoded into
// out) for a command: an error is a failure (exit 1) with the server's
// message.
func apiCall(c *cli.Context, client *http.Client, method, u string, in, out any) error {
	if err := pipeline.Call(c.Context, client, method, u, in, out); err != nil {
		return failure("%v", err)
	}
	return nil
}
