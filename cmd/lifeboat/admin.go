package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

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

// apiCall sends a request with an optional JSON body and decodes a 200's
// JSON answer into out; anything else is a failure carrying the server's
// message.
func apiCall(client *http.Client, method, u string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return failure("%v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode != http.StatusOK {
		var e pipeline.SegmentReply
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return failure("%s: %s", resp.Status, msg)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("answer of %s: %w", u, err)
	}
	return nil
}
