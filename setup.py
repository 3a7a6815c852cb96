"""Packaging for r3covr, driven by settings.ini (the nbdev 2 convention)."""
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['Pre-Alpha', 'Alpha', 'Beta', 'Production/Stable', 'Mature', 'Inactive']
lic = licenses[cfg['license']]
reqs = cfg.get('requirements', '').split()
dev_reqs = cfg.get('dev_requirements', '').split()
serve_reqs = cfg.get('serve_requirements', '').split()
ray_reqs = cfg.get('ray_requirements', '').split()
scripts = [s.strip() for s in cfg.get('console_scripts', '').split() if s.strip()]

setuptools.setup(
    name=cfg['lib_name'], version=cfg['version'], description=cfg['description'],
    long_description=Path('README.md').read_text(encoding='utf-8') if Path('README.md').exists() else '',
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'], license=lic[0], url=cfg['git_url'],
    keywords=cfg['keywords'].split(),
    classifiers=[f"Development Status :: {cfg['status']} - {statuses[int(cfg['status'])]}",
                 f"Intended Audience :: {cfg['audience']}", f'License :: {lic[1]}',
                 'Natural Language :: English', 'Programming Language :: Python :: 3'],
    packages=setuptools.find_packages(include=['r3covr', 'r3covr.*']),
    include_package_data=True, package_data={'r3covr': ['presets/*.json']},
    install_requires=reqs, extras_require={'dev': dev_reqs, 'serve': serve_reqs, 'ray': ray_reqs},
    python_requires=f">={cfg['min_python']}", zip_safe=False,
    entry_points={'console_scripts': scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
