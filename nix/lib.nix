# Definitions the NixOS modules share (nix/module.nix, nix/netboot.nix, nix/provisioner.nix), so
# that questions such as "is this URL ssh?" or "is this secret in the Nix store?" have one answer.
# Plain functions over nixpkgs' lib; tests/nix_eval.rs checks the parsers against the Rust code
# that decides the same thing at run time (gix's URL parser, std's address parser).
{ lib }:

let
  inherit (lib)
    all
    any
    concatStringsSep
    elemAt
    filter
    foldl'
    hasPrefix
    length
    splitString
    ;

  hexValue = lib.listToAttrs (
    lib.imap0 (i: c: lib.nameValuePair c i) (lib.stringToCharacters "0123456789abcdef")
  );
  # (lib.fromHexString is newer than some nixpkgs the modules must evaluate with.)
  fromHex = s: foldl' (acc: c: acc * 16 + hexValue.${lib.toLower c}) 0 (lib.stringToCharacters s);

  # An IPv4 address as Rust's Ipv4Addr parser takes it (library/core/src/net/parser.rs): four
  # decimal octets, no leading zeros, each at most 255. A list of the octets, or null.
  parseIpv4 =
    s:
    let
      octet = "(0|[1-9][0-9]{0,2})";
      m = builtins.match "${octet}\\.${octet}\\.${octet}\\.${octet}" s;
      octets = if m == null then null else map lib.toInt m;
    in
    if octets != null && all (o: o <= 255) octets then octets else null;

  # Groups of an IPv6 address half (between "::"), as 16-bit numbers; an IPv4 address may end
  # it (it counts as two groups) only when `ipv4Allowed`. null when malformed.
  v6Groups =
    ipv4Allowed: s:
    let
      parts = if s == "" then [ ] else splitString ":" s;
      last = if parts == [ ] then null else lib.last parts;
      v4 = if ipv4Allowed && last != null then parseIpv4 last else null;
      hex = if v4 != null then lib.init parts else parts;
    in
    if all (g: builtins.match "[0-9a-fA-F]{1,4}" g != null) hex then
      map fromHex hex
      ++ lib.optionals (v4 != null) [
        (elemAt v4 0 * 256 + elemAt v4 1)
        (elemAt v4 2 * 256 + elemAt v4 3)
      ]
    else
      null;

  # An IPv6 address as Rust's Ipv6Addr parser takes it: eight groups, or fewer around one "::"
  # that stands for at least one zero group; an IPv4 address only at the very end. The eight
  # groups, or null. (No zone: "%eth1" is not part of an address literal.)
  parseIpv6 =
    s:
    let
      halves = splitString "::" s;
      head = v6Groups (length halves == 1) (elemAt halves 0);
      tail = v6Groups true (elemAt halves 1);
    in
    if length halves == 1 then
      (if head != null && length head == 8 then head else null)
    else if length halves == 2 && head != null && tail != null && length head + length tail <= 7 then
      head ++ lib.genList (_: 0) (8 - length head - length tail) ++ tail
    else
      null;

  # "/a/./b//c/../d" -> "/a/b/d"; what the kernel would open (symbolic links aside).
  normalisePath =
    p:
    "/"
    + concatStringsSep "/" (
      foldl' (
        acc: c:
        if c == "" || c == "." then
          acc
        else if c == ".." then
          lib.take (length acc - 1) acc
        else
          acc ++ [ c ]
      ) [ ] (splitString "/" p)
    );

  # Paths that are the Nix store, or links into it, on every NixOS machine.
  storeLinks = [
    "${builtins.storeDir}/"
    "/etc/static/"
    "/run/current-system/"
    "/run/booted-system/"
  ];

  # Why the file at `value` (a string or a Nix path) is readable by every user because it is in
  # the Nix store, not counting /etc; null when it is not.
  storeReason =
    value:
    let
      s = toString value;
      n = normalisePath s;
    in
    if builtins.isPath value then
      "it is a Nix path (${s}), which Nix copies into the store when it renders the configuration"
    else if any (p: hasPrefix p (n + "/")) storeLinks then
      "${s} is inside the Nix store"
    else if builtins.hasContext s then
      "it is made from a store path (${s})"
    else
      null;
in
{
  inherit parseIpv4 parseIpv6 normalisePath;

  # The transports as pullnix decides them (src/repo_url.rs, from gix's URL parser): ssh for
  # ssh://, the legacy git+ssh:// and ssh+git://, and scp-like [user@]host:path (no "://", no
  # "/" before the first ":"); git:// and http:// are plain text.
  isSsh =
    url:
    builtins.match "(ssh|git\\+ssh|ssh\\+git)://.*" url != null
    || (!lib.hasInfix "://" url && builtins.match "[^/:]+:.*" url != null);
  isPlainText = url: builtins.match "(git|http)://.*" url != null;
  # A password in the URL's userinfo (scheme://user:secret@host/…).
  hasPassword = url: builtins.match "[a-zA-Z0-9+.-]+://[^/@]*:[^/@]*@.*" url != null;

  # An address `pullnix pxe-api` can listen on, as `{ v4 = [ octets ]; }` or
  # `{ v6 = [ groups ]; }` (an IPv4-mapped IPv6 address as its IPv4 address, as pxe-api's
  # to_canonical() sees it), or `{ error = "…"; }` saying why not. pxe-api parses
  # ADDRESS:PORT with std's SocketAddr (src/pxe.rs); Linux refuses to bind a link-local IPv6
  # address without a zone, and a zone is no part of a URL installers could be given.
  listenAddress =
    a:
    let
      v4 = parseIpv4 a;
      v6 = parseIpv6 a;
      mapped = v6 != null && lib.take 6 v6 == [ 0 0 0 0 0 65535 ];
      zone = builtins.match "([^%]*)%(.*)" a;
    in
    if v4 != null then
      { inherit v4; }
    else if mapped then
      {
        v4 = [
          (elemAt v6 6 / 256)
          (lib.mod (elemAt v6 6) 256)
          (elemAt v6 7 / 256)
          (lib.mod (elemAt v6 7) 256)
        ];
      }
    else if v6 != null && builtins.bitAnd (elemAt v6 0) 65472 == 65152 then
      {
        error = "a link-local IPv6 address (fe80::/10), which can only be listened on with a zone (\"%eth1\"), which pxe-api does not take";
      }
    else if v6 != null then
      { inherit v6; }
    else if zone != null && parseIpv6 (elemAt zone 0) != null then
      {
        error = "an IPv6 address with a zone (\"%${elemAt zone 1}\"), which pxe-api does not take (link-local addresses, the ones that need a zone, cannot be used)";
      }
    else
      {
        error = "not an IP address: pxe-api listens on an IPv4 or IPv6 address literal, not on a host name";
      };

  isLoopbackAddress =
    p: (p ? v4 && elemAt p.v4 0 == 127) || (p ? v6 && p.v6 == lib.genList (i: if i == 7 then 1 else 0) 8);
  isWildcardAddress =
    p: (p ? v4 && p.v4 == [ 0 0 0 0 ]) || (p ? v6 && p.v6 == lib.genList (_: 0) 8);

  # Why a secret file named by `value` (deploy key, credentials) is readable by every user, or
  # null. Beyond storeReason: a path below an entry of environment.etc, whose file NixOS writes
  # into the store (`text`, or a `source` in the store) and links or copies from there
  # (nixos/modules/system/etc/etc.nix).
  secretExposure =
    etc: value:
    let
      direct = storeReason value;
      n = normalisePath (toString value);
      entries = lib.filterAttrs (
        _: e:
        let
          t = normalisePath "/etc/${e.target}";
        in
        e.enable && (n == t || hasPrefix "${t}/" n)
      ) etc;
      stored = lib.filterAttrs (_: e: e.text != null || storeReason e.source != null) entries;
      name = lib.head (lib.attrNames stored);
    in
    if value == null then
      null
    else if direct != null then
      direct
    else if stored != { } then
      "${toString value} is environment.etc.\"${name}\", whose file NixOS puts into the Nix store"
    else
      null;

  # Whether a module definition `def` sets the attribute at `path`, looking through mkIf,
  # mkMerge, mkOverride and mkOrder (lib/modules.nix). For telling an explicit setting from a
  # default: a submodule's definitions are those of options.<…>.definitions.
  definesAttr =
    let
      go =
        path: def:
        if path == [ ] then
          true
        else if !builtins.isAttrs def then
          false
        else
          let
            t = def._type or null;
          in
          if t == "merge" then
            any (go path) def.contents
          else if t == "if" then
            def.condition && go path def.content
          else if t == "override" || t == "order" then
            go path def.content
          else if t != null then
            false
          else
            def ? ${lib.head path} && go (lib.tail path) def.${lib.head path};
    in
    go;

  # Programs on the PATH of every pullnix unit without services.pullnix.path: those of the
  # packages nix/module.nix puts there (nix, git, openssh, systemd, coreutils; vulnix with the
  # scan) and of the ones NixOS adds to every service (systemd-lib.nix, stage2ServiceConfig:
  # coreutils, findutils, gnugrep, gnused, systemd). Only for telling, at evaluation, whether a
  # health command named without a path can be found; no package is built to find out.
  defaultPathPrograms =
    # coreutils
    [
      "["
      "b2sum"
      "base32"
      "base64"
      "basename"
      "basenc"
      "cat"
      "chcon"
      "chgrp"
      "chmod"
      "chown"
      "chroot"
      "cksum"
      "comm"
      "cp"
      "csplit"
      "cut"
      "date"
      "dd"
      "df"
      "dir"
      "dircolors"
      "dirname"
      "du"
      "echo"
      "env"
      "expand"
      "expr"
      "factor"
      "false"
      "fmt"
      "fold"
      "groups"
      "head"
      "hostid"
      "id"
      "install"
      "join"
      "link"
      "ln"
      "logname"
      "ls"
      "md5sum"
      "mkdir"
      "mkfifo"
      "mknod"
      "mktemp"
      "mv"
      "nice"
      "nl"
      "nohup"
      "nproc"
      "numfmt"
      "od"
      "paste"
      "pathchk"
      "pinky"
      "pr"
      "printenv"
      "printf"
      "ptx"
      "pwd"
      "readlink"
      "realpath"
      "rm"
      "rmdir"
      "runcon"
      "seq"
      "sha1sum"
      "sha224sum"
      "sha256sum"
      "sha384sum"
      "sha512sum"
      "shred"
      "shuf"
      "sleep"
      "sort"
      "split"
      "stat"
      "stdbuf"
      "stty"
      "sum"
      "sync"
      "tac"
      "tail"
      "tee"
      "test"
      "timeout"
      "touch"
      "tr"
      "true"
      "truncate"
      "tsort"
      "tty"
      "uname"
      "unexpand"
      "uniq"
      "unlink"
      "users"
      "vdir"
      "wc"
      "who"
      "whoami"
      "yes"
    ]
    # findutils, gnugrep, gnused
    ++ [
      "find"
      "xargs"
      "grep"
      "egrep"
      "fgrep"
      "sed"
    ]
    # systemd (the commands a health check would use)
    ++ [
      "systemctl"
      "journalctl"
      "busctl"
      "loginctl"
      "networkctl"
      "resolvectl"
      "timedatectl"
      "hostnamectl"
      "bootctl"
      "udevadm"
      "systemd-analyze"
      "systemd-run"
      "systemd-notify"
      "systemd-cat"
      "systemd-detect-virt"
      "systemd-inhibit"
      "systemd-creds"
    ]
    # nix, git, openssh
    ++ [
      "nix"
      "nix-build"
      "nix-env"
      "nix-instantiate"
      "nix-store"
      "nix-shell"
      "git"
      "ssh"
      "scp"
      "sftp"
      "ssh-keygen"
      "ssh-keyscan"
    ];
}
