//! Where the upload's symbolic links lead: textual rules on a target, then resolution through
//! the other links of the tree, the way the kernel will resolve them once checked out.

use std::collections::HashMap;

use super::{TreeEntry, UploadError, UploadTree};

/// The textual rules of a symbolic link target; where it leads is checked once the whole tree is
/// known ([`check_links_resolve_inside`]).
pub(super) fn check_symlink(target: &str) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("symbolic link without a target");
    }
    if target.len() > super::MAX_PATH_BYTES {
        return Err("link target is longer than 4096 bytes (PATH_MAX)");
    }
    if target
        .split('/')
        .any(|part| part.len() > super::MAX_NAME_BYTES)
    {
        return Err("a link target component is longer than 255 bytes (NAME_MAX)");
    }
    if target.starts_with('/') {
        return Err("symbolic link leaves the tree (absolute target)");
    }
    if target.contains('\0') {
        return Err("link target holds a NUL");
    }
    if target
        .split('/')
        .any(|part| part.eq_ignore_ascii_case(".git"))
    {
        return Err("link target names `.git`");
    }
    Ok(())
}

/// Most symbolic links followed, one inside another, to resolve one link (Linux's MAXSYMLINKS).
pub const MAX_LINK_DEPTH: usize = 40;

/// The upload's paths as a tree of components, to resolve links the way the kernel will once
/// the tree is checked out: each component is looked up, and a link found on the way is replaced
/// by where it leads.
struct PathTree<'a> {
    nodes: Vec<PathNode<'a>>,
}

struct PathNode<'a> {
    parent: usize,
    children: HashMap<&'a str, usize>,
    /// The path and target of a symbolic link.
    link: Option<(&'a str, &'a str)>,
}

/// Where a path resolves to: a node of the tree, then `extra` components that are not in it
/// (a dangling path; a `..` first climbs back out of those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    node: usize,
    extra: usize,
}

const ROOT: usize = 0;

enum Resolution {
    InProgress,
    /// Where the link leads, and how many links deep its resolution went (itself included).
    Done(Place, usize),
}

impl<'a> PathTree<'a> {
    fn new(tree: &'a UploadTree) -> Self {
        let mut this = PathTree {
            nodes: vec![PathNode {
                parent: ROOT,
                children: HashMap::new(),
                link: None,
            }],
        };
        for (path, entry) in &tree.entries {
            let mut node = ROOT;
            for part in path.split('/') {
                node = match this.nodes[node].children.get(part) {
                    Some(&child) => child,
                    None => {
                        let child = this.nodes.len();
                        this.nodes.push(PathNode {
                            parent: node,
                            children: HashMap::new(),
                            link: None,
                        });
                        this.nodes[node].children.insert(part, child);
                        child
                    }
                };
            }
            if let TreeEntry::Symlink { target } = entry {
                this.nodes[node].link = Some((path.as_str(), target.as_str()));
            }
        }
        this
    }

    /// Where the link at `node` finally leads, following the links on its way (memoised), and
    /// how deep that went. `depth` counts the links being resolved around this one.
    fn resolve(
        &self,
        node: usize,
        depth: usize,
        memo: &mut HashMap<usize, Resolution>,
    ) -> Result<(Place, usize), UploadError> {
        let (path, target) = self.nodes[node].link.expect("resolve is called on links");
        let hostile = |reason| UploadError::Hostile {
            entry: path.chars().take(200).collect(),
            reason,
        };
        let too_deep = || hostile("too many levels of symbolic links");
        match memo.get(&node) {
            Some(Resolution::Done(place, levels)) if depth + levels <= MAX_LINK_DEPTH => {
                return Ok((*place, *levels));
            }
            Some(Resolution::Done(..)) => return Err(too_deep()),
            Some(Resolution::InProgress) => return Err(hostile("symbolic link loop")),
            None if depth >= MAX_LINK_DEPTH => return Err(too_deep()),
            None => {}
        }
        memo.insert(node, Resolution::InProgress);
        let mut at = Place {
            node: self.nodes[node].parent,
            extra: 0,
        };
        let mut inner = 0;
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." if at.extra > 0 => at.extra -= 1,
                ".." if at.node == ROOT => return Err(hostile("symbolic link leaves the tree")),
                ".." => at.node = self.nodes[at.node].parent,
                _ if at.extra > 0 => at.extra += 1,
                name => match self.nodes[at.node].children.get(name) {
                    None => at.extra = 1,
                    Some(&child) if self.nodes[child].link.is_some() => {
                        let (place, levels) = self.resolve(child, depth + 1, memo)?;
                        at = place;
                        inner = inner.max(levels);
                    }
                    Some(&child) => at.node = child,
                },
            }
        }
        memo.insert(node, Resolution::Done(at, inner + 1));
        Ok((at, inner + 1))
    }
}

/// Every symbolic link, resolved through the links already in the tree, stays inside it (a
/// `d/up -> ..` is fine; `x -> d/up/../etc` is not).
pub(super) fn check_links_resolve_inside(tree: &UploadTree) -> Result<(), UploadError> {
    let paths = PathTree::new(tree);
    let mut memo = HashMap::new();
    for (node, n) in paths.nodes.iter().enumerate() {
        if n.link.is_some() {
            paths.resolve(node, 0, &mut memo)?;
        }
    }
    Ok(())
}
