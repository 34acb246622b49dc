# Apache Curator from Debian's jars (libcurator-*-java, Curator 5.4; Maven Central is not
# needed) and a JDK, for the bench's Curator harness and the revocation interop test,
# compiled with plain javac. Source it; it needs scripts/lib/common.sh.

CURATOR_CP=/usr/share/java/curator-recipes.jar:/usr/share/java/slf4j-nop.jar

# curator_install: the Curator jars, slf4j and (when javac is missing) a JDK.
curator_install() {
  local pkgs=(libcurator-recipes-java libcurator-framework-java libcurator-client-java libslf4j-java)
  command -v javac >/dev/null 2>&1 || pkgs+=(default-jdk-headless)
  ql_apt_install "${pkgs[@]}"
}

# curator_compile OUT SOURCE...: javac against the Curator jars into OUT (quiet; the
# compiler's output goes to OUT/javac.log).
curator_compile() {
  local out=$1
  shift
  mkdir -p "$out"
  javac -nowarn -d "$out" -cp "$CURATOR_CP" "$@" >"$out/javac.log" 2>&1
}

# curator_setup: exports QUEUELOCK_TEST_CURATOR_CLASSPATH, a class path with the
# revocation interop test's Java peer (tests/interop/CuratorRevoke.java).
curator_setup() {
  local out="$PWD/target/interop-java"
  curator_install
  ql_log "compiling the Curator interop peer"
  curator_compile "$out" tests/interop/CuratorRevoke.java || {
    cat "$out/javac.log" >&2
    return 1
  }
  QUEUELOCK_TEST_CURATOR_CLASSPATH="$out:$CURATOR_CP"
  export QUEUELOCK_TEST_CURATOR_CLASSPATH
}
