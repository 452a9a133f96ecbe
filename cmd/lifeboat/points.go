package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/pipeline"
)

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
				Flags:        append(adminFlags(), volumeFlag(), outputFlag()),
				OnUsageError: onUsageError,
				Action:       pointsList,
			},
			{
				Name:  "export",
				Usage: "write a recovery point's image to a file (or a block device) and print its sha256",
				Flags: append(adminFlags(), volumeFlag(),
					&cli.StringFlag{Name: "point", Value: "latest", Usage: "`SEQ` of the point, or latest"},
					&cli.StringFlag{Name: "out", Required: true, Usage: "`FILE` to write (sparse where the image is zero; it appears only once\n" +
						"\tcomplete), or a block device to restore onto (written in place, every byte)"}),
				OnUsageError: onUsageError,
				Action:       pointsExport,
			},
		},
	}
}

func pointsList(c *cli.Context) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	client, base, err := adminClient(c)
	if err != nil {
		return err
	}
	var points []pipeline.Point
	if err := apiCall(c, client, http.MethodGet, volumeURL(c, base)+"/points", nil, &points); err != nil {
		return err
	}
	if format == "json" {
		return printJSON(c.App.Writer, points)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tGENERATION\tKIND\tTIME\tAGE\tNAME")
	for _, p := range points {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\n", p.Seq, p.Generation, p.Kind, p.Time.UTC().Format(time.RFC3339),
			time.Since(p.Time).Round(time.Second), p.Name)
	}
	return tw.Flush()
}

// pointsExport writes a point's image all or nothing: exit 1 and no file
// unless exactly the image's size arrived.
func pointsExport(c *cli.Context) error {
	client, base, err := adminClient(c)
	if err != nil {
		return err
	}
	d, err := pipeline.GetPoint(c.Context, client, volumeURL(c, base), c.String("point"))
	if err != nil {
		return failure("%v", err)
	}
	defer d.Close()
	out := c.String("out")
	e, err := createExport(out)
	if err != nil {
		return failure("--out: %v", err)
	}
	h := sha256.New()
	n, err := e.copy(io.TeeReader(d, h), d.Size)
	if err == nil {
		err = e.commit()
	}
	if err != nil {
		e.abort()
		what := "nothing was written to " + out
		if e.device {
			what = out + " holds a partial image: export again before using it"
		}
		return failure("export of point %d of %s failed after %s of %s: %v; %s", d.Seq, c.String("volume"),
			humanBytes(uint64(n)), humanBytes(uint64(d.Size)), err, what)
	}
	fmt.Fprintf(c.App.Writer, "point %d of %s: %d bytes to %s\nsha256 %s\n", d.Seq, c.String("volume"), n, out, hex.EncodeToString(h.Sum(nil)))
	return nil
}
