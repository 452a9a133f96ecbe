package main

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/pipeline"
	"lifeboat/pipeline/pki"
)

// volumeCommand is `lifeboat volume`: the site's volumes and the machines
// they belong to.
func volumeCommand() *cli.Command {
	return &cli.Command{
		Name:  "volume",
		Usage: "list the site's volumes and move a volume to another machine",
		Description: "A volume belongs to the machine whose agent certificate first replicated it to the site; only\n" +
			"that machine's agent may write it, and an agent certificate sees only its own machine's volumes.\n" +
			"Volumes are named MACHINE/NAME (or by id; a bare NAME works while only one machine has it).\n\n" +
			"Examples:\n" +
			"   lifeboat volume list --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat volume reassign web01/db --to web01-new --data-dir /var/lib/lifeboat/server",
		OnUsageError: onUsageError,
		Action:       unknownCommand,
		Subcommands: []*cli.Command{
			{
				Name:         "list",
				Usage:        "list the volumes this identity may see: machine, name, id, progress, points, state",
				Flags:        append(adminFlags(), outputFlag()),
				OnUsageError: onUsageError,
				Action:       volumeList,
			},
			{
				Name:      "reassign",
				Usage:     "move a volume to another machine (a rebuilt or renamed one); its old machine's agent is refused from then on",
				ArgsUsage: "VOLUME",
				Description: "Moves VOLUME (MACHINE/NAME, an id, or a NAME only one machine has) to the machine --to names: from\n" +
					"then on only the agent with that machine's certificate may replicate it, and the old machine's agent\n" +
					"is refused (403). Nothing moves a volume implicitly. Use it when a protected machine was rebuilt or\n" +
					"renamed and keeps its journal directory; a cloned machine should get a new --journal-dir instead.\n\n" +
					"Example:\n" +
					"   lifeboat volume reassign web01/db --to web01-new --data-dir /var/lib/lifeboat/server",
				Flags: append(adminFlags(),
					&cli.StringFlag{Name: "to", Required: true, Usage: "`MACHINE`: the name (CN) of the agent certificate that owns the volume from now on"}),
				OnUsageError: onUsageError,
				Action:       volumeReassign,
			},
		},
	}
}

func volumeList(c *cli.Context) error {
	var vols []pipeline.VolumeStatus
	format, err := adminList(c, "/volumes", &vols)
	if err != nil {
		return err
	}
	if format == "json" {
		return printJSON(c.App.Writer, vols)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tID\tSIZE\tAPPLIED SEQ\tPOINTS\tLATEST POINT\tSTATE")
	for _, v := range vols {
		latest := "-"
		if p := v.LatestPoint; p != nil {
			latest = fmt.Sprintf("%d (%s)", p.Seq, p.Time.UTC().Format("2006-01-02 15:04:05Z"))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", siteVolumeName(v), v.Info.ID, humanBytes(uint64(v.Info.Size)),
			v.AppliedSeq, v.Points, latest, volumeState(v))
	}
	return tw.Flush()
}

// siteVolumeName is MACHINE/NAME, or NAME for a replica without a machine.
func siteVolumeName(v pipeline.VolumeStatus) string {
	if v.Info.Machine == "" {
		return v.Info.Name + " (no machine yet)"
	}
	return v.Info.Machine + "/" + v.Info.Name
}

func volumeState(v pipeline.VolumeStatus) string {
	var rec []string
	for _, r := range v.Recovery {
		switch {
		case r.Kind == pipeline.RecoveryFailover && r.Committed:
			rec = append(rec, fmt.Sprintf("FAILED OVER to point %d at %s (committed)", r.Point.Seq, r.Since.UTC().Format(time.RFC3339)))
		case r.Kind == pipeline.RecoveryFailover:
			rec = append(rec, fmt.Sprintf("FAILED OVER to point %d at %s (not committed)", r.Point.Seq, r.Since.UTC().Format(time.RFC3339)))
		default:
			rec = append(rec, fmt.Sprintf("test failover of point %d since %s", r.Point.Seq, r.Since.UTC().Format(time.RFC3339)))
		}
	}
	if v.PlannedFailover != "" {
		rec = append(rec, "planned failover: waiting for the agent")
	}
	if len(rec) > 0 {
		return strings.Join(rec, "; ")
	}
	switch {
	case v.Failed != "":
		return "FAILED: " + v.Failed
	case v.ApplyError != "":
		return "apply failing: " + v.ApplyError
	case v.SpooledSeq > v.AppliedSeq:
		return "applying"
	}
	return "ok"
}

func volumeReassign(c *cli.Context) error {
	args, err := leafArgs(c, 1, "one VOLUME (MACHINE/NAME or an id)")
	if err != nil {
		return err
	}
	to := c.String("to")
	if err := pki.CheckName(to); err != nil {
		return usageError("--to: %v", err)
	}
	client, base, err := adminClient(c)
	if err != nil {
		return err
	}
	var st pipeline.VolumeStatus
	u := base + "/volumes/" + url.PathEscape(args[0]) + "/machine"
	if err := apiCall(c, client, http.MethodPost, u, pipeline.MachineRequest{Machine: to}, &st); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "volume %s (id %s) belongs to machine %s now: only its agent may replicate it,\n"+
		"and any other machine's agent is refused from its next request\n", args[0], st.Info.ID, st.Info.Machine)
	return nil
}
