package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/hrl"
	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// adminFlags select the process server and the admin identity.
func adminFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Value: "https://127.0.0.1:9443", Usage: "`URL` of the process server"},
		&cli.StringFlag{Name: "data-dir", Usage: "server `DIR`: use its admin identity (DIR/pki/admin.crt, admin.key, ca.crt)"},
		&cli.StringFlag{Name: "cert", Usage: "admin certificate `FILE` (lifeboat certs issue --role admin)"},
		&cli.StringFlag{Name: "key", Usage: "admin key `FILE`"},
		&cli.StringFlag{Name: "ca", Usage: "the site's CA certificate `FILE`"},
		&cli.StringFlag{Name: "volume", Required: true, Usage: "volume `NAME` (or id)"},
	}
}

// adminClient builds the client and the volume URL from adminFlags.
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
	return client, "https://" + hostPort(u.Host) + "/v1/volumes/" + url.PathEscape(c.String("volume")), nil
}

func getOK(client *http.Client, u string) (*http.Response, error) {
	resp, err := client.Get(u)
	if err != nil {
		return nil, failure("%v", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var e pipeline.SegmentReply
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, failure("%s: %s", resp.Status, msg)
	}
	return resp, nil
}

func pointsCommand() *cli.Command {
	return &cli.Command{
		Name:  "points",
		Usage: "list recovery points and export their images",
		Description: "Talks to the process server with an admin certificate. A point opens in constant time: the\n" +
			"export streams its image without copying anything on the server first.\n\n" +
			"Examples:\n" +
			"   lifeboat points list --data-dir /var/lib/lifeboat/server --volume db\n" +
			"   lifeboat points export --data-dir /var/lib/lifeboat/server --volume db --point latest --out db.img",
		Action: unknownCommand,
		Subcommands: []*cli.Command{
			{
				Name:         "list",
				Usage:        "list a volume's recovery points, oldest first",
				Flags:        append(adminFlags(), outputFlag()),
				OnUsageError: onUsageError,
				Action:       pointsList,
			},
			{
				Name:  "export",
				Usage: "write a recovery point's image to a file and print its sha256",
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "point", Value: "latest", Usage: "`SEQ` of the point, or latest"},
					&cli.StringFlag{Name: "out", Required: true, Usage: "`FILE` to write (sparse where the image is zero)"}),
				OnUsageError: onUsageError,
				Action:       pointsExport,
			},
		},
	}
}

func pointsList(c *cli.Context) error {
	client, base, err := adminClient(c)
	if err != nil {
		return err
	}
	resp, err := getOK(client, base+"/points")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var points []pipeline.Point
	if err := json.NewDecoder(resp.Body).Decode(&points); err != nil {
		return fmt.Errorf("points: %w", err)
	}
	if c.String("output") == "json" {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(points)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tGENERATION\tKIND\tTIME\tAGE\tNAME")
	for _, p := range points {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\n", p.Seq, p.Generation, p.Kind, p.Time.UTC().Format(time.RFC3339),
			time.Since(p.Time).Round(time.Second), p.Name)
	}
	return tw.Flush()
}

func pointsExport(c *cli.Context) error {
	client, base, err := adminClient(c)
	if err != nil {
		return err
	}
	resp, err := getOK(client, base+"/points/"+url.PathEscape(c.String("point")))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out := c.String("out")
	f, err := os.Create(out)
	if err != nil {
		return failure("%v", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := streamSparse(f, io.TeeReader(resp.Body, h))
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		return fmt.Errorf("export to %s: %w", out, err)
	}
	fmt.Fprintf(c.App.Writer, "point %s of %s: %d bytes to %s\nsha256 %s\n", resp.Header.Get("X-Lifeboat-Point-Seq"),
		c.String("volume"), n, out, hex.EncodeToString(h.Sum(nil)))
	return nil
}

// streamSparse copies r to f, seeking over all-zero 64 KiB blocks so the file
// stays sparse, and sets the final size.
func streamSparse(f *os.File, r io.Reader) (int64, error) {
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if !hrl.IsZero(buf[:n]) {
				if _, werr := f.WriteAt(buf[:n], off); werr != nil {
					return off, werr
				}
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return off, f.Truncate(off)
		}
		if err != nil {
			return off, err
		}
	}
}
